"""The release rule for HE scores: what one decrypted score may reveal about the sandbox's columns.

An approved model's score is ``bias + sum_j w_j * clamp(x_j) + (the applicant's encrypted part)``.
The applicant decrypts it and knows its own part, so without a rule it reads the sandbox part
``P = bias + sum_j w_j * clamp(x_j)`` to about 1e-8: weights at very different scales (1, 1e3,
1e6, ...) pack several columns into the digits of one number, and one large weight among tiny
ones returns that column. Three parts, on by default, bound what a score carries:

1. **Noise inside the sandbox.** Every entity's P gets fresh Gaussian noise (opendp's sampler)
   before it is added to the ciphertext, with standard deviation

       sigma = max(R / range_ratio, d_max / step_ratio)

   where ``R = sum_j |w_j| (upper_j - lower_j)`` is the model's contribution range (P lies in
   an interval of that length whatever the row) and ``d_max = max |w_j|`` over integer columns
   is the most one step of one integer column moves P. The first term bounds the information
   in one score: an input confined to an interval of length R through Gaussian noise sigma
   carries at most ``min(1/2 log2(1 + (R/sigma)^2/4), log2(1 + R/(sigma sqrt(2 pi e))))``
   bits (the power bound and McKellips' amplitude bound), whatever the model and whatever the
   applicant knows. The second term bounds what one score says about one step of any one
   integer column, even to someone who knows the rest of the row: the two score
   distributions differ in total variation by at most ``2 Phi(step_ratio / 2) - 1``.
2. **Contribution balance at submission.** Every term's contribution ``|w_j| (upper_j - lower_j)``
   must lie within ``max_contribution_ratio`` of every other term's, so no term is negligible
   (the low digits of a mixed-radix packing) and none dominates (one column with tiny others).
   A mixed-radix packing needs each digit's step above the whole range of the digits below,
   so its top term's contribution exceeds its bottom term's by the product of the lower
   digits' level counts: refused; and its lower digits would drown in the noise floor anyway,
   since sigma is at least the top term's step.
3. **A per-entity limit.** One grant may score the same entity id at most ``scores_per_entity``
   times (unknown ids count alike), so averaging the noise away is bounded: L scores of one
   entity carry at most the bits of one score at ``sqrt(L) * R / sigma``.

A grant with a per-call epsilon cap adds opendp's Laplace noise on top (``dp_engine.noise``), priced and
charged: that mode gives a formal differential-privacy guarantee per call; this rule gives a
bound in bits per score and needs no budget.

What remains is stated in the repository's THREATS.md: a model that leans on one binary column
reveals it up to the one-step bound above; steps of float columns are not bounded (declare a
discrete column as an integer column to get the bound); an applicant with several grants for
the same entities gets each grant's allowance.

Magnitudes: CKKS with the sandbox's profiles decodes values far beyond what any accepted model
produces, and the engine refuses plain values above 2**30; the registry accepts only models
whose P (plus 16 noise standard deviations) stays below 2**29 and whose private weights stay
below 2**20, so every accepted model scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sandbox.domain import ColumnType, DatasetSchema
from sandbox.errors import ErrorCode, SandboxError

#: Largest |P| + 16 sigma an accepted model can produce (the engine refuses plain values above 2**30).
MAX_PLAIN = 2.0**29
#: Largest magnitude of a private feature's weight.
MAX_PRIVATE_WEIGHT = 2.0**20
#: Noise tail kept below MAX_PLAIN: a Gaussian exceeds 16 sigma with probability about 1e-57.
TAIL_SIGMAS = 16.0


@dataclass(frozen=True)
class ReleaseRule:
    """Deployment settings of the release rule (``sandbox.toml``; see the module docstring)."""

    range_ratio: float = 20.0
    step_ratio: float = 1.0
    max_contribution_ratio: float = 10.0
    scores_per_entity: int = 2
    min_public_weights: int = 3

    def __post_init__(self) -> None:
        if not (self.range_ratio > 0 and self.step_ratio > 0 and self.max_contribution_ratio >= 1
                and self.scores_per_entity >= 1 and self.min_public_weights >= 1):
            raise ValueError("release rule settings out of range")


@dataclass(frozen=True)
class Term:
    """One sandbox column's part in a model's score, as the reviewer reads it."""

    column: str
    weight: float
    lower: float
    upper: float
    contribution: float  # |w| (upper - lower): how far this term alone can move the score
    share: float  # contribution / R
    step: float  # |w| for an integer column (one step of its value), 0 for a float column


@dataclass(frozen=True)
class ReleaseReview:
    """What the release rule makes of one model: its terms, the noise and what one score can carry."""

    terms: tuple[Term, ...]
    contribution_range: float  # R
    noise_sd: float  # sigma
    bits_per_score: float
    scores_per_entity: int
    bits_per_entity: float  # after scores_per_entity scores of one entity
    step_tv_per_entity: float  # total variation one step of one integer column can cause over those scores
    max_abs_plain: float  # largest |bias + sum_j w_j x_j| over the columns' bounds


def bits_bound(snr: float) -> float:
    """Bits an input confined to an interval of length R can carry through Gaussian noise, snr = R / sigma.

    The smaller of the power bound 1/2 log2(1 + snr^2/4) (variance at most R^2/4) and McKellips'
    bound for an amplitude-limited channel, log2(1 + snr / sqrt(2 pi e)).
    """
    return min(0.5 * math.log2(1.0 + snr * snr / 4.0), math.log2(1.0 + snr / math.sqrt(2.0 * math.pi * math.e)))


def step_tv(ratio: float) -> float:
    """Total variation between N(0, 1) and N(ratio, 1): 2 Phi(ratio / 2) - 1."""
    return math.erf(ratio / (2.0 * math.sqrt(2.0)))


def terms_of(public_features: tuple[tuple[str, float], ...], schema: DatasetSchema) -> list[Term]:
    """Each public term's contribution and step (columns are assumed checked: numeric with bounds)."""
    raw = []
    for name, weight in public_features:
        col = schema.column(name)
        if col is None or col.lower is None or col.upper is None:  # e.g. a later dataset version without it
            raise SandboxError(ErrorCode.MODEL_OUTSIDE_RULE, log_detail=f"column {name} has no bounds here")
        contribution = abs(weight) * (col.upper - col.lower)
        step = abs(weight) if col.type is ColumnType.INTEGER else 0.0
        raw.append((name, weight, float(col.lower), float(col.upper), contribution, step))
    total = sum(r[4] for r in raw)
    return [Term(n, w, lo, hi, c, c / total if total > 0 else 0.0, s) for n, w, lo, hi, c, s in raw]


def contribution_range(public_features: tuple[tuple[str, float], ...], schema: DatasetSchema) -> float:
    """R: how far one entity's row can move the sandbox part of a score (the DP mode's L1 sensitivity)."""
    return sum(t.contribution for t in terms_of(public_features, schema))


def review(public_features: tuple[tuple[str, float], ...], bias: float, schema: DatasetSchema,
           rule: ReleaseRule) -> ReleaseReview:
    """The release rule applied to a model's public part (no checks: see ``check``)."""
    terms = terms_of(public_features, schema)
    r = sum(t.contribution for t in terms)
    step = max((t.step for t in terms), default=0.0)
    sigma = max(r / rule.range_ratio, step / rule.step_ratio)
    snr = r / sigma if sigma > 0 else math.inf
    per_entity = rule.scores_per_entity
    max_plain = abs(bias) + sum(abs(t.weight) * max(abs(t.lower), abs(t.upper)) for t in terms)
    return ReleaseReview(
        terms=tuple(terms), contribution_range=r, noise_sd=sigma, bits_per_score=bits_bound(snr),
        scores_per_entity=per_entity, bits_per_entity=bits_bound(snr * math.sqrt(per_entity)),
        step_tv_per_entity=step_tv(step / sigma * math.sqrt(per_entity)) if sigma > 0 else 1.0,
        max_abs_plain=max_plain)


def fold_small_terms(public_features: tuple[tuple[str, float], ...], bias: float, schema: DatasetSchema,
                     rule: ReleaseRule) -> tuple[tuple[tuple[str, float], ...], float, list[tuple[str, float]]]:
    """A trained model's sandbox terms without those the balance rule would refuse, and the terms dropped.

    Training gives every feature some weight, DP training small ones too: a term whose whole contribution
    |w| (upper - lower) is less than 1/``max_contribution_ratio`` of the largest term's makes ``check`` refuse
    the model although it barely moves a score. Each such term is replaced by its value at mid-range, folded
    into the bias (for any row the model moves by at most half the term's contribution), and returned as
    (column, contribution) for the description. The largest term stays, so one pass leaves every kept term
    within the ratio of every other. A model the rule accepts is left as it is, and so is one that would keep
    fewer than ``min_public_weights`` columns (``check`` then refuses it and names the two columns). Used for
    ``RegisterTrainedModel`` (the server's own conversion); a model a person submits is checked as given.
    """
    terms = terms_of(public_features, schema)
    largest = max((t.contribution for t in terms), default=0.0)
    small = [t for t in terms if largest > rule.max_contribution_ratio * t.contribution]
    if not small or len(terms) - len(small) < rule.min_public_weights:
        return public_features, bias, []
    gone = {t.column for t in small}
    mid = sum(t.weight * (t.lower + t.upper) / 2 for t in small)
    return (tuple((c, w) for c, w in public_features if c not in gone), bias + mid,
            [(t.column, t.contribution) for t in small])


def check(public_features: tuple[tuple[str, float], ...], private_weights: tuple[float, ...], bias: float,
          schema: DatasetSchema, rule: ReleaseRule) -> ReleaseReview:
    """Refuse a model the release rule cannot bound, or one whose scores the HE profiles cannot carry."""
    def bad(why: str) -> SandboxError:
        return SandboxError(ErrorCode.INVALID_ARGUMENT, why)

    if not all(math.isfinite(w) for _, w in public_features) or not math.isfinite(bias):
        raise bad("weights and bias must be finite")
    if not all(math.isfinite(w) and abs(w) <= MAX_PRIVATE_WEIGHT for w in private_weights):
        raise bad(f"private weights must be finite and at most {MAX_PRIVATE_WEIGHT:g} in magnitude")
    zero = [c for c, w in public_features if w == 0.0]
    if zero:
        raise bad(f"drop the zero-weight sandbox column(s) {', '.join(zero[:8])}: a term that adds nothing "
                  "does not count")
    if len(public_features) < rule.min_public_weights:
        raise bad(f"a model needs at least {rule.min_public_weights} sandbox columns with non-zero weights "
                  "(fewer could reveal a single column)")
    rev = review(public_features, bias, schema, rule)
    smallest = min(rev.terms, key=lambda t: t.contribution)
    largest = max(rev.terms, key=lambda t: t.contribution)
    if largest.contribution > rule.max_contribution_ratio * smallest.contribution:
        ratio = largest.contribution / smallest.contribution if smallest.contribution > 0 else math.inf
        raise bad(f"contributions are unbalanced: '{largest.column}' can move the score {ratio:.3g} times as far "
                  f"as '{smallest.column}' (|weight| x (upper - lower); at most {rule.max_contribution_ratio:g} "
                  "allowed), so one column would dominate the score or another would hide in its low digits")
    if rev.max_abs_plain + TAIL_SIGMAS * rev.noise_sd > MAX_PLAIN:
        raise bad(f"weights and bias too large: the sandbox's part of a score could reach {rev.max_abs_plain:.3g}, "
                  f"more than the HE profiles carry (at most {MAX_PLAIN:g} with its noise)")
    return rev
