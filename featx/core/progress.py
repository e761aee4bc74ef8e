"""featx's one progress bar, for extraction (both engines) and fine-tuning.

``tqdm.auto``: a widget in a Jupyter notebook, a text bar on stderr in a terminal. Shown by
default (``progress=True`` everywhere in featx), also when stderr is not a terminal, as the
command line always showed it; ``progress=False`` (``featx --no-progress``) hides it.
"""

from __future__ import annotations

import warnings

from tqdm import TqdmWarning

# In a notebook without ipywidgets (pip install featx[notebook]) tqdm.auto falls back to the
# text bar, which a notebook shows as well, after a TqdmWarning of its own at import: the
# fallback is fine, the warning is noise in the user's cell.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="IProgress not found", category=TqdmWarning)
    from tqdm.auto import tqdm


def bar(total: int, desc: str, unit: str, progress: bool = True, initial: int = 0,
        leave: bool = True) -> tqdm:
    """A progress bar of ``total`` ``unit``s (``initial`` of them done before: a resumed
    job), hidden unless ``progress``; use it as a context manager or ``close()`` it."""
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave,
                disable=not progress)
