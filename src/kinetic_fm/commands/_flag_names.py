"""The flag a ``kfm`` user typed for each name the library or a run's record uses, and messages
reworded in those flags (plain Python: ``kfm --help`` stays fast).

The library names its arguments (samples, train, steps) and a run records its settings by key (a
manifest's ``config.steps``, a training state's ``train.lr``); a user of ``kfm`` typed flags
(--samples, --steps, --lr). Each command keeps its own table beside its parser: a plain mapping of
the library's argument names, and a :class:`SettingFlags` of the settings its runs record and
compare on --resume. The rewording lives here, once: :func:`named_by_its_flag` for a message's
opening name and the names later in it that stand as arguments ("with k = 3", "(lr)"; built on
:func:`as_arguments` and :func:`where_named`), :func:`in_flags` for names anywhere in it,
:func:`flag_words` for every error and warning of a block, and :meth:`SettingFlags.named` /
:meth:`SettingFlags.flag_of` for a resume refusal's changed settings."""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SettingFlags:
    """The flag, or flags ("--data/--n"), that set each setting a command's runs record and compare
    on --resume, by the name the record gives it ("config.steps", "seeds.n", "train.lr").

    Attributes:
        direct: recorded name -> what a user changes to change that setting (a flag, flags joined
            by "/", or a phrase such as "the KTS flags").
        derived: recorded names another setting decides (a --dim change moves the sample shape
            too; a net's kind comes with its weights) -> the flag behind them: named only when no
            ``direct`` setting differs, so that one change is named once.
    """

    direct: Mapping[str, str]
    derived: Mapping[str, str] = field(default_factory=dict)

    def flag_of(self, name: str) -> str | None:
        """The flag that sets the recorded setting ``name`` (``seeds.n``: ``--n``), or None."""
        return self.direct.get(name) or self.derived.get(name)

    def named(self, names: Iterable[str]) -> list[str]:
        """Of the recorded ``names`` that differ, those a refusal names: without the derived ones
        when any other differs (their own setting is named), else all of them."""
        names = list(names)
        return [name for name in names if name not in self.derived] or names


def flag_value(value, none: str = "none") -> str:
    """``value`` as a command line writes it: a float as ``:g`` writes it where that reads back as the
    same float (0.0001, 1e-05), else in full (0.123456789); True / False as on / off (a switch);
    None as ``none`` (a flag's word for "not set": "0" for no clipping); anything else as ``str``."""
    if value is None:
        return none
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}" if float(f"{value:g}") == value else repr(value)
    return str(value)


def named_by_its_flag(err: ValueError, flags: dict[str, str]) -> ValueError:
    """``err`` ("steps must be a positive integer, got 0", "beta0 = 0.06 makes ... with k = 3") in the
    flags ``flags`` maps the library's argument names to: the argument it opens with ("--steps must
    be ...", "--beta0 = 0.06 makes ..."), and in the rest each one written as an argument
    (:func:`where_named`): the range stays where it is checked, the names are the user's."""
    return ValueError(as_arguments(str(err), flags))


def as_arguments(text: str, flags: dict[str, str]) -> str:
    """:func:`named_by_its_flag`'s words for a message's ``text``: the argument it opens with ("n must
    be ...") and the rest by :func:`where_named`."""
    for joint in (" must ", " = "):
        name, _, rest = text.partition(joint)
        if name in flags and rest:
            return f"{flags[name]}{joint}{where_named(rest, flags)}"
    return where_named(text, flags)


def where_named(text: str, flags: dict[str, str]) -> str:
    """``text`` with the argument names ``flags`` maps replaced by their flags where they stand as
    arguments, not as words of the prose: a name no word spells (one with "_" or a digit: beta0,
    grad_clip) anywhere, and any name as ``name=value`` ("beyond steps=4": "beyond --steps 4"), ``name =
    value`` ("with k = 3") or alone in parentheses ("(lr)"). "checkpoint steps must ..." and "the
    exponential landing" stay."""
    import re

    coined = {name: flag for name, flag in flags.items() if not name.isalpha()}
    text = in_flags(text, coined)
    words = {name: flag for name, flag in flags.items() if name.isalpha()}
    if not words:
        return text
    names = "|".join(re.escape(name) for name in sorted(words, key=len, reverse=True))
    text = re.sub(rf"\(({names})\)", lambda m: f"({words[m[1]]})", text)
    text = re.sub(rf"(?<![\w./^-])({names})(?= = )", lambda m: words[m[1]], text)
    return in_flags(text, words, valued_only=True)


def in_flags(text: str, flags: dict[str, str], valued_only: bool = False) -> str:
    """``text`` with each argument name ``flags`` maps that stands as a word replaced by its flag, and
    ``name=value`` by ``flag value``: "samples and train must have ..." as "--samples and --train
    must have ...", "key='x' does not apply" as "--key 'x' does not apply". A name inside another
    word, a path, a flag or an exponent (train_set, data/train, --train-key, e^k) is left as it is;
    ``name=True`` is the switch alone ("resume=True": "--resume").
    For messages that name arguments throughout (:func:`where_named` for those whose prose uses the
    same words); with ``valued_only``, only the ``name=value`` ones."""
    import re

    if not flags:
        return text
    names = "|".join(re.escape(name) for name in sorted(flags, key=len, reverse=True))
    value = "" if valued_only else "?"
    pattern = rf"(?<![\w./^-])({names})(?:=('[^']*'|\"[^\"]*\"|[^\s,;)]+)){value}(?![\w/-]|\.\w)"
    return re.sub(pattern, lambda m: flags[m[1]] + ("" if m[2] in (None, "True") else f" {m[2]}"), text)


@contextlib.contextmanager
def flag_words(flags: dict[str, str], source: tuple[str, str] | None = None, *, anywhere: bool = True,
               errors: bool = True):
    """The library's ValueErrors, OSErrors (not with ``errors`` False: the block's own are handled
    by type) and warnings inside the block in the command line's words: the argument names ``flags``
    maps given as flags, wherever they stand as words (:func:`in_flags`), or with ``anywhere`` False
    only where they stand as arguments (:func:`as_arguments`: for names its prose uses too), and with ``source``,
    a ``(flag, value)`` whose value the block reads, a message that does not name that flag led by
    it ("--train t.npy: holds complex64 values", "--train: no such file: t.npy"). The library's
    own messages name its arguments (samples, train, key), which a user of ``kfm`` never typed."""
    import re
    import warnings
    from pathlib import Path

    from ..checks import split_spec

    def worded(text: str) -> str:
        text = in_flags(text, flags) if anywhere else as_arguments(text, flags)
        if source is None:
            return text
        flag, value = source
        if text.startswith("--") or re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text):
            return text   # in the command line's words already
        # the value, as the library spells it, or a data spec's path (folder:PATH), as parse_spec reads it
        given = {value, str(Path(value)), *((split_spec(value)[1],) if ":" in value else ())} - {""}
        if any(text.startswith(name + end) for name in given for end in (":", "/")):
            return f"{flag} {text}"   # "s.npy: ...", "imgs/odd.png: ...": the value is the message's subject
        if any(name in text for name in given):
            return f"{flag}: {text}"
        return f"{flag} {value}: {text}"

    try:
        with warnings.catch_warnings():   # the hook is restored when the block ends
            shown = warnings.showwarning

            def show(message, category, *args, **kwargs):
                text = worded(str(message))
                try:
                    message = category(text)
                except Exception:  # a warning class that takes more than its text
                    message = text
                shown(message, category, *args, **kwargs)

            warnings.showwarning = show
            yield
    except ValueError as err:
        if not errors:
            raise
        raise ValueError(worded(str(err))) from None
    except OSError as err:
        if not errors:
            raise
        kind = type(err) if type(err).__module__ == "builtins" else OSError  # FileNotFoundError stays one
        raise kind(worded(str(err))) from None
