"""What to do with a trained classifier beyond loss and accuracy: class scores, top-k accuracy, the
confusion matrix, the reject option and committees of several networks.

Each rank evaluates its contiguous part of the split (``eval_partition``) batch by batch into a ``Tally`` of
counts; one allreduce of all counts at the end gives every rank the totals, so the figures do not depend on
the rank count. The misclassified examples travel as a few (index, true, predicted) triples.

Class scores: softmax probabilities for ``softmax_cross_entropy`` (the lectures' reject option compares the
two largest), sigmoids for ``binary_cross_entropy`` on logits (one output: [1 - p, p]), the outputs
themselves for ``mse``. A committee averages its members' scores (``rule="mean"``) or counts their votes
(``rule="vote"``: the scores are the vote shares, ties broken by the mean score).
"""

import numpy as np

from ..errors import UserError
from ..nn.layers.activations import sigmoid
from ..nn.losses import BinaryCrossEntropy, SoftmaxCrossEntropy

MARGINS = np.round(np.arange(0, 1, 0.01), 2)  # the reject curve's margins: 0..0.99 (at 1 only saturated scores pass)
RULES = ("mean", "vote")


def class_scores(loss, output):
    """(N, C) class scores of a model's OUTPUT (N, C) or (N, 1) under LOSS (see the module docstring)."""
    out = np.asarray(output, np.float64).reshape(len(output), -1)
    if isinstance(loss, SoftmaxCrossEntropy):
        e = np.exp(out - out.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if isinstance(loss, BinaryCrossEntropy):
        p = sigmoid(out) if loss.from_logits else out
        return np.concatenate([1 - p, p], axis=1) if p.shape[1] == 1 else p
    return out


def combine(scores, rule="mean"):
    """The committee's (N, C) scores from a list of members' (N, C) scores."""
    mean = np.mean(scores, axis=0)
    if rule == "mean" or len(scores) == 1:
        return mean
    if rule != "vote":
        raise UserError(f"unknown committee rule {rule!r}: choose one of {', '.join(RULES)}")
    n, c = mean.shape
    votes = np.zeros((n, c))
    for s in scores:
        votes[np.arange(n), s.argmax(axis=1)] += 1
    # Mean scores lie in [0, 1]: scaled below one vote, they only break ties between equal vote counts.
    return (votes + 0.5 * np.clip(mean, 0, 1)) / len(scores)


def margin(scores):
    """Largest minus second-largest score of each row (the whole largest score for one class)."""
    if scores.shape[1] < 2:
        return scores[:, 0].copy()
    top2 = np.partition(scores, -2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


class Tally:
    """Counts of one evaluation, filled batch by batch; ``totals(world)`` sums them over ranks."""

    def __init__(self, num_classes, members=1, top_k=5, margins=MARGINS, rule="mean", keep_wrong=36):
        self.c, self.k, self.rule, self.keep_wrong = num_classes, top_k, rule, keep_wrong
        self.margins = np.asarray(margins, np.float64)
        self.member_loss = np.zeros(members)
        self.member_correct = np.zeros(members)
        self.confusion = np.zeros((num_classes, num_classes))  # rows: true class, columns: predicted
        self.top_k = np.zeros(1)
        self.accepted = np.zeros(len(self.margins))
        self.accepted_wrong = np.zeros(len(self.margins))
        self.wrong = []  # (index in the split, true, predicted), this rank's first keep_wrong

    def add(self, losses, outputs, y, start):
        """Count one batch: each member's LOSSES (mean over the batch) and OUTPUTS, labels Y of the samples at
        positions START.. of the split."""
        y = np.asarray(y).reshape(-1)
        n = len(y)
        scores = [class_scores(loss, out) for loss, out in zip(losses, outputs)]
        for i, (loss, out) in enumerate(zip(losses, outputs)):
            self.member_loss[i] += loss.forward(out, y) * n
            self.member_correct[i] += loss.correct(out, y)
        s = combine(scores, self.rule)
        pred = s.argmax(axis=1)
        np.add.at(self.confusion, (y, pred), 1)
        above = (s > s[np.arange(n), y][:, None]).sum(axis=1)  # classes scored above the true one
        self.top_k += np.sum(above < self.k)
        accept = margin(s)[:, None] >= self.margins[None, :]  # rejected: margin below the threshold
        self.accepted += accept.sum(axis=0)
        self.accepted_wrong += (accept & (pred != y)[:, None]).sum(axis=0)
        for j in np.flatnonzero(pred != y)[:self.keep_wrong - len(self.wrong)]:
            self.wrong.append((start + int(j), int(y[j]), int(pred[j])))

    def totals(self, world):
        """The counts summed over ranks (collective): a dict, the same on every rank."""
        parts = [self.member_loss, self.member_correct, self.confusion, self.top_k, self.accepted,
                 self.accepted_wrong]
        flat = world.allreduce(np.concatenate([p.ravel() for p in parts]).astype(np.float64))
        out, at = [], 0
        for p in parts:
            out.append(flat[at:at + p.size].reshape(p.shape))
            at += p.size
        loss, correct, confusion, top_k, accepted, accepted_wrong = out
        wrong = sorted(w for part in world.allgather(self.wrong) for w in part)[:self.keep_wrong]
        return dict(member_loss=loss, member_correct=correct, confusion=confusion.astype(np.int64),
                    top_k=int(top_k[0]), accepted=accepted.astype(np.int64),
                    accepted_wrong=accepted_wrong.astype(np.int64), wrong=wrong)


def report(t, class_names, top_k, reject=None, margins=MARGINS):
    """The evaluation's figures as a JSON-ready dict from ``Tally.totals``; REJECT is the margin asked for."""
    confusion = t["confusion"]
    n = int(confusion.sum())
    per_class = confusion.sum(axis=1)
    diag = np.diag(confusion)
    members = [dict(loss=float(l_ / max(n, 1)), accuracy=float(c_ / max(n, 1)))
               for l_, c_ in zip(t["member_loss"], t["member_correct"])]
    curve = [dict(margin=float(m), rejected=float(1 - a / max(n, 1)), error=float(e / a) if a else None)
             for m, a, e in zip(margins, t["accepted"], t["accepted_wrong"])]
    one = len(members) == 1  # one model: its loss, and accuracy by its loss's rule (as training evaluates)
    out = dict(samples=n, **(members[0] if one else dict(accuracy=float(diag.sum() / max(n, 1)))),
               members=members,
               top_k=dict(k=top_k, accuracy=float(t["top_k"] / max(n, 1))),
               classes=list(class_names),
               per_class=[dict(name=name, samples=int(s), accuracy=float(d / s) if s else None)
                          for name, s, d in zip(class_names, per_class, diag)],
               confusion=confusion.tolist(), reject_curve=curve,
               misclassified=[dict(index=i, true=a, predicted=b) for i, a, b in t["wrong"]])
    if reject is not None:
        out["reject"] = next(dict(c) for c in curve if np.isclose(c["margin"], reject))
    return out
