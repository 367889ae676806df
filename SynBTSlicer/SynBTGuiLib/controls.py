"""Qt controls of the SynBT panel: a run button that becomes Cancel, and an Export/Train job section.
Widgets and timers only; what runs is SynBTLib.slicer_panel / slicer_worker."""
import qt
import slicer

POLL_MS = 200
LOG_BLOCKS = 2000  # lines kept in an Export/Train log box


class JobSection:
    """An Export or Train section: its button starts a CommandJob and turns into Stop; a timer shows the
    job's log lines and progress until it ends."""

    def __init__(self, button, progressBar, logBox, idleText, resumeHint, startJob, onStateChanged):
        self.button, self.progressBar, self.logBox, self.idleText = button, progressBar, logBox, idleText
        self.resumeHint, self.startJob, self.onStateChanged = resumeHint, startJob, onStateChanged
        self.job = None
        self.logBox.maximumBlockCount = LOG_BLOCKS
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.poll)
        button.connect("clicked(bool)", self.onButton)

    @property
    def running(self):
        return self.job is not None

    def updateButton(self, ready):
        stopping = bool(self.job and self.job.stopping)
        self.button.text = "Stopping..." if stopping else ("Stop" if self.job else self.idleText)
        self.button.enabled = (self.job is not None and not stopping) or (self.job is None and ready)

    def onButton(self):
        if self.job is not None:
            self.job.request_stop()
            self.logBox.appendPlainText("Stopping...")
        else:
            with slicer.util.tryWithErrorDisplay("SynBT could not start.", waitCursor=True):
                self.job = self.startJob()
                if self.job is not None:
                    self.logBox.clear()
                    self.logBox.appendPlainText("$ " + " ".join(self.job.command))
                    self.progressBar.value = 0
                    self.timer.start()
        self.onStateChanged()

    def poll(self):
        job = self.job
        self._show(job)
        if job.running:
            return
        self.timer.stop()
        job.wait(timeout=10)
        self._show(job)
        self.job = None
        if job.stopping:
            self.logBox.appendPlainText(f"Stopped. {self.resumeHint}")
        elif job.succeeded:
            self.logBox.appendPlainText("Finished.")
        else:
            self.logBox.appendPlainText(f"Failed: {job.error_message()}")
            slicer.util.errorDisplay(f"SynBT {job.kind} failed: {job.error_message()}")
        self.onStateChanged()

    def _show(self, job):
        for line in job.read_log():
            self.logBox.appendPlainText(line)
        progress = job.progress()
        self.progressBar.value = progress.percent
        self.progressBar.format = f"%p%  {progress.message}" if progress.message else "%p%"
        self.progressBar.toolTip = job.bar

    def stop(self):
        self.timer.stop()
        if self.job is not None:
            job, self.job = self.job, None
            job.stop()


class RunControl:
    """A button that starts a run (poll() -> status, finish(), cancel() of SynBTLib.slicer_panel) and is
    Cancel while it runs; a timer shows its progress, then its result is added to the scene."""

    def __init__(self, button, progressBar, statusLabel, idleText, start, finished, onStateChanged):
        self.button, self.progressBar, self.statusLabel, self.idleText = button, progressBar, statusLabel, idleText
        self.start, self.finished, self.onStateChanged = start, finished, onStateChanged
        self.run = None
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.poll)
        button.connect("clicked(bool)", self.onButton)

    def updateButton(self, ready):
        self.button.text = "Cancel" if self.run else self.idleText
        self.button.enabled = self.run is not None or ready

    def onButton(self):
        if self.run is not None:
            self.cancel()
            self.statusLabel.text = "Cancelled; the scene is unchanged."
            return
        with slicer.util.tryWithErrorDisplay("SynBT could not start.", waitCursor=True):
            self.run = self.start()
            if self.run is not None:
                self.progressBar.value = 0
                self.statusLabel.text = "Starting..."
                self.timer.start()
        self.onStateChanged()

    def poll(self):
        status = self.run.poll()
        self.progressBar.value = status.percent
        self.statusLabel.text = status.message
        if not status.finished:
            return
        self.timer.stop()
        run, self.run = self.run, None
        self.onStateChanged()
        with slicer.util.tryWithErrorDisplay("SynBT failed.", waitCursor=True):
            self.statusLabel.text = self.finished(run.finish())

    def cancel(self):
        self.timer.stop()
        if self.run is not None:
            run, self.run = self.run, None
            run.cancel()
            self.onStateChanged()
