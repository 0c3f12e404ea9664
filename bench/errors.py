"""The one exception type for user mistakes (the CLI prints it as one line and exits 2), and the one way
any other exception is shown to a user: as one line."""


class BenchError(Exception):
    """A mistake the user can fix: the message says what is wrong and how to fix it, in one line."""


def one_line(err: BaseException, limit: int = 500) -> str:
    """`Type: message` on one line, at most `limit` characters; a driver's error unwrapped from sqlalchemy's."""
    orig = getattr(err, "orig", None)
    shown = orig if isinstance(orig, BaseException) else err
    text = " ".join(str(shown).split("(Background on this error")[0].split())
    return (f"{type(shown).__name__}: {text}" if text else type(shown).__name__)[:limit]
