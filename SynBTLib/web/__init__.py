"""`synbt web`: SynBT in the browser, on trame-slicer (real MRML scene, segment editor, offscreen views).

files.py (folder confinement, case listing, host/token policy) needs nothing but the engine; app.py and
study.py need the `web` extra (trame-slicer). Every decision (which volumes are phases, whether Generate
can run, the requests, the run itself) comes from SynBTLib.slicer_panel, as in the Slicer panel.
"""
