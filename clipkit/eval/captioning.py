"""Scores generated captions against reference captions with the COCO caption scorers.

pycocoevalcap (the coco-caption code): PTB tokenization, BLEU-1..4, METEOR 1.5, ROUGE-L and CIDEr-D
(its ``Cider`` is the CIDEr-D variant: Gaussian length penalty, sigma 6, clipped n-gram counts).
The tokenizer and METEOR run on Java. Without Java, captions are tokenized in Python the way the
PTB tokenizer's post-processing does (lower case, punctuation dropped) and METEOR is left out.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import shutil

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

log = logging.getLogger(__name__)

# The punctuation PTBTokenizer removes after tokenizing.
_PUNCTUATION = re.compile(r"''|'|``|`|-LRB-|-RRB-|-LCB-|-RCB-|[.?!,:\-;]")


def _python_tokenize(captions: dict[int, list[str]]) -> dict[int, list[str]]:
    return {
        key: [" ".join(_PUNCTUATION.sub(" ", c.lower()).split()) for c in values] for key, values in captions.items()
    }


def java_available() -> bool:
    return shutil.which("java") is not None


def caption_scores(references: dict[int, list[str]], generated: dict[int, str]) -> dict[str, float]:
    """references: per sample its reference captions; generated: per sample one caption."""
    candidates = {key: [caption] for key, caption in generated.items()}
    references = {key: references[key] for key in generated}
    scorers = [(["bleu_1", "bleu_2", "bleu_3", "bleu_4"], Bleu(4)), (["rouge_l"], Rouge()), (["cider_d"], Cider())]
    quiet = io.StringIO()  # the scorers print their progress on stdout
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        if java_available():
            tokenizer = PTBTokenizer()
            refs = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in references.items()})
            cands = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in candidates.items()})
            scorers.append((["meteor"], Meteor()))
        else:
            log.warning(
                "java not found: METEOR and the PTB tokenizer need it (apt install "
                "default-jre-headless); scoring BLEU, ROUGE-L and CIDEr-D on a Python tokenization"
            )
            refs, cands = _python_tokenize(references), _python_tokenize(candidates)
        scores: dict[str, float] = {}
        for names, scorer in scorers:
            value, _ = scorer.compute_score(refs, cands)
            values = value if isinstance(value, list) else [value]
            scores.update({name: float(v) for name, v in zip(names, values)})
    return scores
