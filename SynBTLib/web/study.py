"""The reader study page: a named reader answers real / synthetic with a confidence of 1-5, item by item;
every answer is written to the study's SQLite at once (reader_study.Answers), so a reader can stop and
resume. A trame page's state is shared by every browser connected to it, so what one reader sees is kept
in client-only state: the server keeps nothing per reader but the database, and several readers can use
the same page at once, each in their own tab."""
from __future__ import annotations

import base64
from pathlib import Path

from .. import reader_study as rs
from ..errors import SynBTError

CLIENT_ONLY = ("reader", "view", "confidence", "error")


class StudyPage:
    def __init__(self, server, study: str | Path):
        self.server, self.state = server, server.state
        self.study = Path(study).resolve()
        self.items = set(rs.load_items(self.study))  # refuses a folder that is not a study
        self.state.update(trame__title="SynBT reader study", reader="", view=None, confidence=3, error="")
        self.state.client_only(*CLIENT_ONLY)
        self.server.trigger("study_next")(self.next_view)
        self.server.trigger("study_answer")(self.answer)
        self._build_ui()

    def next_view(self, reader: str) -> dict:
        """The reader's next view (or finished), for this tab only; errors come back as {'error': ...}."""
        try:
            rs.check_reader(reader)
            answers = rs.Answers(self.study)  # one connection per call: other readers write at the same time
            try:
                reader = answers.canonical(reader)  # "anna " resumes as the "Anna" who started
                item, done, total = rs.next_item(self.study, reader, answers)
            finally:
                answers.close()
        except SynBTError as exc:
            return {"error": str(exc)}
        image = ""
        if item is not None:  # ids come from study.json only, so no client value ever names a file
            image = "data:image/png;base64," + base64.b64encode((self.study / rs.IMAGES / f"{item}.png").read_bytes()).decode()
        return {"reader": reader, "item": item, "image": image, "done": done, "total": total, "finished": item is None}

    def answer(self, reader: str, item: str, choice: str, confidence) -> dict:
        try:
            answers = rs.Answers(self.study)
            try:
                answers.record(reader, item, choice, int(confidence))
            finally:
                answers.close()
        except (SynBTError, ValueError, TypeError) as exc:
            return {"error": str(exc)}
        return self.next_view(reader)

    def _build_ui(self):
        from trame.ui.vuetify3 import SinglePageLayout
        from trame.widgets import html
        from trame.widgets import vuetify3 as v

        show = "(r) => { if (r.error) { error = r.error } else { error = ''; view = r; confidence = 3 } }"
        with SinglePageLayout(self.server, theme="dark") as layout:
            layout.title.set_text("SynBT reader study: real or synthetic?")
            with layout.content:
                with v.VContainer(classes="pa-4"):
                    with html.Div(v_if=("!view",), id="login"):
                        html.P("Each view shows one tumor: every DCE phase and the subtraction (post 1 - pre). "
                               "Answer whether the tumor is real or synthetic, and how confident you are.")
                        v.VTextField(label="Your name", v_model=("reader",), id="reader", style="max-width: 320px;")
                        v.VBtn("Start / resume", color="primary", id="start",
                               click=f"trigger('study_next', [reader]).then({show})")
                    with html.Div(v_if=("view && !view.finished",), id="question"):
                        html.Div("{{ view.reader }}: view {{ view.done + 1 }} of {{ view.total }}",
                                 classes="text-subtitle-1 mb-2", id="counter")
                        html.Img(src=("view.image",), style="max-width: 100%;", id="view")
                        html.Div("Confidence: {{ confidence }} (1 = guessing, 5 = certain)", classes="mt-2")
                        v.VSlider(v_model=("confidence",), min=1, max=5, step=1, show_ticks="always",
                                  style="max-width: 320px;", hide_details=True, id="confidence")
                        with html.Div(classes="d-flex ga-4 mt-2"):
                            for choice, color in (("real", "success"), ("synthetic", "warning")):
                                v.VBtn(choice.capitalize(), color=color, id=f"answer-{choice}",
                                       click=f"trigger('study_answer', [view.reader, view.item, '{choice}', confidence])"
                                             f".then({show})")
                    html.Div("Thank you, {{ view.reader }}: all {{ view.total }} views are answered.",
                             v_if=("view && view.finished",), id="finished", classes="text-h6")
                    html.Div("{{ error }}", classes="text-error", id="error")
