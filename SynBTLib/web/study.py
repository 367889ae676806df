"""The reader study page: a named reader answers real / synthetic with a confidence of 1-5, item by item;
every answer is written to the study's SQLite at once (reader_study.Answers), so a reload resumes."""
from __future__ import annotations

import base64
from pathlib import Path

from .. import reader_study as rs
from ..errors import SynBTError


class StudyPage:
    def __init__(self, server, study: str | Path):
        self.server, self.state = server, server.state
        self.study = Path(study).resolve()
        self.items = set(rs.load_items(self.study))  # refuses a folder that is not a study
        self.state.update(trame__title="SynBT reader study", reader="", started=False, item=None, image="",
                          done=0, total=len(self.items), confidence=3, finished=False, error="")
        self._build_ui()

    def _answers(self) -> rs.Answers:
        return rs.Answers(self.study)  # one connection per action: readers in other tabs write at the same time

    def start(self) -> None:
        try:
            reader = rs.check_reader(self.state.reader)
        except SynBTError as exc:
            self.state.error = str(exc)
            return
        self.state.update(reader=reader, started=True, error="")
        self._show_next()

    def _show_next(self) -> None:
        answers = self._answers()
        try:
            item, done, total = rs.next_item(self.study, self.state.reader, answers)
        finally:
            answers.close()
        image = ""
        if item is not None:  # ids come from study.json only, so no client value ever names a file
            image = "data:image/png;base64," + base64.b64encode((self.study / rs.IMAGES / f"{item}.png").read_bytes()).decode()
        self.state.update(item=item, image=image, done=done, total=total, finished=item is None, confidence=3)

    def answer(self, choice: str) -> None:
        answers = self._answers()
        try:
            answers.record(self.state.reader, self.state.item, choice, int(self.state.confidence))
        except (SynBTError, ValueError, TypeError) as exc:
            self.state.error = str(exc)
            return
        finally:
            answers.close()
        self.state.error = ""
        self._show_next()

    def _build_ui(self):
        from trame.ui.vuetify3 import SinglePageLayout
        from trame.widgets import html
        from trame.widgets import vuetify3 as v

        with SinglePageLayout(self.server, theme="dark") as layout:
            layout.title.set_text("SynBT reader study: real or synthetic?")
            with layout.content:
                with v.VContainer(classes="pa-4"):
                    with html.Div(v_if=("!started",), id="login"):
                        html.P("Each view shows one tumor: every DCE phase and the subtraction (post 1 - pre). "
                               "Answer whether the tumor is real or synthetic, and how confident you are.")
                        v.VTextField(label="Your name", v_model=("reader",), id="reader", style="max-width: 320px;")
                        v.VBtn("Start / resume", click=self.start, color="primary", id="start")
                    with html.Div(v_if=("started && !finished",), id="question"):
                        html.Div("{{ reader }}: view {{ done + 1 }} of {{ total }}", classes="text-subtitle-1 mb-2",
                                 id="counter")
                        html.Img(src=("image",), style="max-width: 100%; image-rendering: auto;", id="view")
                        html.Div("Confidence: {{ confidence }} (1 = guessing, 5 = certain)", classes="mt-2")
                        v.VSlider(v_model=("confidence",), min=1, max=5, step=1, show_ticks="always",
                                  style="max-width: 320px;", hide_details=True, id="confidence")
                        with html.Div(classes="d-flex ga-4 mt-2"):
                            v.VBtn("Real", click=(self.answer, "['real']"), color="success", id="answer-real")
                            v.VBtn("Synthetic", click=(self.answer, "['synthetic']"), color="warning",
                                   id="answer-synthetic")
                    html.Div("Thank you, {{ reader }}: all {{ total }} views are answered.", v_if=("finished",),
                             id="finished", classes="text-h6")
                    html.Div("{{ error }}", classes="text-error", id="error")
