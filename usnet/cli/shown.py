"""Text a client chose (its Hello label, its pipe's name and schema, its program's name), as the
tools print it: never markup, never a terminal control sequence.

The domain shows every session's label and pipe names to whoever asks (root sees all), so a
client could otherwise break `usnet status` for everyone (rich markup that does not close raises)
or drive the operator's terminal (escape sequences). Like ps(1), each character that is not
printable is shown as "?"; the result is a rich `Text`, which no markup interprets.
"""

from __future__ import annotations

from rich.text import Text

__all__ = ["shown"]


def shown(text: object) -> Text:
    """`text` (a client's) as a table cell: printable characters kept, any other one a "?"."""
    return Text("".join(c if c.isprintable() else "?" for c in str(text)))
