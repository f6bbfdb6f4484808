"""The status line every widget shows under its buttons.

A plain label sizes itself to its text: one long error (a path plus "download
with ...") once widened the dock to 2,700 px and the window with it, for
good. :class:`StatusLabel` wraps at spaces and inside long unbroken tokens
(paths), shortens what is left beyond :data:`MAX_CHARS` with an ellipsis, keeps
the full message in its tooltip and ``value``, and asks for no width of its
own, so no message can resize the dock or the window.
"""
from __future__ import annotations

import re

from magicgui.widgets import Label
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QSizePolicy

#: characters shown; the rest is in the tooltip (and in the notification)
MAX_CHARS = 300
#: longest run of characters without a break opportunity (Qt wraps only at
#: break opportunities, so a long path would otherwise set the label's width)
MAX_TOKEN = 24
_BREAK = "\u200b"  # zero-width space: a line-break opportunity that shows nothing
_LONG_TOKEN = re.compile(r"\S{%d,}" % (MAX_TOKEN + 1))


def fit_status_text(text: str, max_chars: int = MAX_CHARS) -> str:
    """``text`` as shown: at most ``max_chars`` characters (ellipsis in the
    middle, so the start and the end of the message stay), with invisible
    break opportunities in tokens longer than :data:`MAX_TOKEN`."""
    text = " ".join(str(text).split())  # one paragraph: newlines would add height
    if len(text) > max_chars:
        keep = max_chars - 1
        text = text[: keep - keep // 3] + "\u2026" + text[len(text) - keep // 3:]

    def breakable(match: "re.Match[str]") -> str:
        token = match.group(0)
        return _BREAK.join(token[i:i + MAX_TOKEN] for i in range(0, len(token), MAX_TOKEN))

    return _LONG_TOKEN.sub(breakable, text)


def make_fitting(label: QLabel) -> QLabel:
    """Make a QLabel wrap and take only the width the layout gives it."""
    label.setWordWrap(True)
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    # Ignored: the label's size hint (its text's width) never widens the dock
    label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    label.setMinimumWidth(1)
    return label


class StatusLabel(Label):
    """magicgui Label for a widget's status line: ``value`` is the full
    message; what is drawn is :func:`fit_status_text` of it."""

    def __init__(self, value: str = "", **kwargs) -> None:
        self._full = ""
        super().__init__(value="", **kwargs)
        make_fitting(self.native)
        self.value = value

    def get_value(self) -> str:
        return self._full

    def set_value(self, value) -> None:
        self._full = "" if value is None else str(value)
        super().set_value(fit_status_text(self._full))
        self.native.setToolTip(self._full if len(self._full) > 40 else "")

    @property
    def shown(self) -> str:
        """The text drawn (shortened, with invisible break opportunities)."""
        return self.native.text()
