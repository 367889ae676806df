"""Label values shared by the phantom, the breast mask and the tumor label maps."""

# Tissue label map written by the phantom (tissue_labels.nii.gz).
AIR = 0
SKIN = 1
FAT = 2  # breast fat only (anterior to the pectoralis); body fat elsewhere is OTHER
FIBROGLANDULAR = 3
MUSCLE = 4  # pectoralis
CHEST_WALL = 5  # ribs, intercostal muscle
THORAX = 6  # lung, mediastinum
HEART = 7
VESSEL = 8
OTHER = 9  # body fat and soft tissue outside the breasts
TUMOR = 10  # enhancing tumor
NECROSIS = 11  # necrotic core of a tumor

TISSUE_NAMES = {
    AIR: "air",
    SKIN: "skin",
    FAT: "fat",
    FIBROGLANDULAR: "fibroglandular",
    MUSCLE: "muscle",
    CHEST_WALL: "chest_wall",
    THORAX: "thorax",
    HEART: "heart",
    VESSEL: "vessel",
    OTHER: "other",
    TUMOR: "tumor",
    NECROSIS: "necrosis",
}

# Labels that count as breast tissue (where a tumor may grow).
BREAST_TISSUE = (FAT, FIBROGLANDULAR, TUMOR, NECROSIS)

# Tumor label map (tumor_labels.nii.gz, and every synthesized tumor label): 0 background, 1 tumor.
TUMOR_LABEL = 1
# In `synbt synthesize` outputs: the tumors the case already had (its own label), beside the new tumor (1).
EXISTING_TUMOR_LABEL = 2
