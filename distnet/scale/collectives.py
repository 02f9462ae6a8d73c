"""The alpha-beta (Hockney) cost of the MPI collectives distnet's sync strategies use, and their fit.

A message of ``n`` bytes between two ranks costs ``alpha + n / beta`` seconds (alpha: latency, beta: bytes per
second). A collective over ``p`` ranks is a sequence of such rounds; which sequence depends on the MPI library
and the message size, so each cost below is named after its algorithm, and ``allreduce`` picks the one the
library runs:

  ring                    2(p-1) alpha + 2(p-1)/p n/beta            (Open MPI's large messages)
  recursive doubling      ceil(log2 p) (alpha + n/beta)             (small messages, both libraries)
  Rabenseifner            2 log2 p' alpha + 2(p'-1)/p' n/beta       (MPICH's large messages; p' the largest
                          + 2 alpha + n/beta when p != p'            power of two <= p: the other ranks hand
                                                                     their vector to a partner first and get
                                                                     the sum back last; the partner's link,
                                                                     the busiest, sets the time)
  reduce-scatter, allgather  each (p-1)/p n/beta + ceil(log2 p) alpha  (recursive halving / doubling)

On several hosts with several ranks each, MPICH (ch4) composes the allreduce: a reduce inside each host, an
allreduce among one leader per host, a broadcast inside each host. Measured on two namespace hosts with the
veth counters, one gradient's worth crosses the host boundary per direction per step with 1 and with 2 ranks
per host: the bytes between hosts do not grow with the ranks per host. The intra-host stages cost the cores'
copies instead; they are charged here as one allreduce over the host's ranks at the intra-host alpha, beta
(what ``distnet calibrate`` measures there). Open MPI's default (tuned) component is not host-aware: its ring
runs over all ranks and every round waits for the slowest link, the one between hosts.
"""

import math

# MPICH's MPIR_CVAR_ALLREDUCE_SHORT_MSG_SIZE: recursive doubling up to this many bytes, Rabenseifner above
MPICH_SHORT = 2048
# Open MPI's tuned decision switches from recursive doubling to the (segmented) ring at about this size
OPENMPI_SHORT = 10_000


def _log2(p):
    return math.ceil(math.log2(p)) if p > 1 else 0


def _pof2(p):
    return 1 << (p.bit_length() - 1)


def ring(p, n, alpha, beta):
    """Ring allreduce of ``n`` bytes over ``p`` ranks (seconds)."""
    return 0.0 if p <= 1 else 2 * (p - 1) * alpha + 2 * (p - 1) / p * n / beta


def recursive_doubling(p, n, alpha, beta):
    return 0.0 if p <= 1 else _log2(p) * (alpha + n / beta)


def rabenseifner(p, n, alpha, beta):
    """Reduce-scatter by recursive halving, then allgather by recursive doubling, over the largest power of
    two of ranks; the others first hand their vector to a partner and get the sum back last. The partner's
    link is the busiest: it sends (and receives) 2(q-1)/q n in the exchanges plus n, the sum it hands back
    (the hand-off in). Its bytes set the time, not the rounds laid end to end: measured on 3 namespace hosts
    at 100 Mbit/s, MPICH's non-blocking allreduce of n bytes took 2.1 n/beta, where the rounds in sequence
    would take 3 n/beta, and the veth counters showed the partner host sending 2n, the others n."""
    if p <= 1:
        return 0.0
    q = _pof2(p)
    t = 2 * _log2(q) * alpha + 2 * (q - 1) / q * n / beta
    return t if q == p else t + 2 * alpha + n / beta


def reduce_scatter(p, n, alpha, beta):
    return 0.0 if p <= 1 else _log2(p) * alpha + (p - 1) / p * n / beta


allgather = reduce_scatter  # the same rounds in reverse


def algorithm(library, n, p):
    """The name of the allreduce algorithm ``library`` ("mpich", "openmpi") runs for ``n`` bytes on ``p``."""
    if p <= 1:
        return "none"
    if library == "openmpi":
        return "recursive doubling" if n <= OPENMPI_SHORT else "ring"
    return "recursive doubling" if n <= MPICH_SHORT or n // 4 < _pof2(p) else "Rabenseifner"


COSTS = {"ring": ring, "recursive doubling": recursive_doubling, "Rabenseifner": rabenseifner,
         "none": lambda p, n, alpha, beta: 0.0}


def allreduce(library, p, n, alpha, beta):
    """Seconds for one allreduce of ``n`` bytes over ``p`` ranks on one level (alpha, beta) by ``library``."""
    return COSTS[algorithm(library, n, p)](p, n, alpha, beta)


def terms(library, p, n):
    """(a, b) with allreduce time = a alpha + b n/beta: the algorithm's rounds, for the fit."""
    one = allreduce(library, p, n, 1.0, math.inf)
    return one, allreduce(library, p, n, 0.0, 1.0) / n if n else 0.0


def hierarchical(library, nodes, per_node, n, intra, inter):
    """Seconds for one allreduce of ``n`` bytes over ``nodes`` x ``per_node`` ranks. ``intra``/``inter``:
    (alpha, beta) inside a host and between hosts (None where that level has one rank)."""
    t = 0.0
    if per_node > 1 and library == "openmpi" and nodes > 1:
        p = nodes * per_node  # one flat ring: every round waits for the link between hosts
        name = algorithm(library, n, p)
        return COSTS[name](p, n, *inter)
    if per_node > 1:
        t += allreduce(library, per_node, n, *intra)  # the host's reduce and broadcast
    if nodes > 1:
        t += allreduce(library, nodes, n, *inter)
    return t


LARGE = 64 << 10  # bytes from which a message's time is mostly bandwidth: beta is fitted on these
SMALL = 2048  # bytes up to which it is mostly latency: alpha is fitted on these


def fit(points, library, p):
    """Fit (alpha, beta) to measured allreduce times ``points`` [(bytes, seconds)] over ``p`` ranks by
    ``library``'s algorithms. Returns (alpha s, beta bytes/s, rms relative error over every point).

    One least-squares fit over sizes spanning six decades lets the middle sizes decide both numbers, and
    there MPI switches protocols (eager to rendezvous, shared-memory copies): on two namespace hosts at
    1 Gbit/s it put beta 25 % above the link and under-predicted a 3.6 MB allreduce by 17 %. So beta comes
    from the large messages (>= 64 KiB, relative least squares with alpha's rounds taken off) and alpha from
    the small ones (<= 2 KiB, the median of what is left after the bytes), alternately until they settle;
    with too few of either kind, the plain fit over all points."""
    pts = [(n, t) for n, t in points if t > 0]
    if len({n for n, _ in pts}) < 2:
        raise ValueError("at least two message sizes are needed to fit alpha and beta")
    rows = [(n, t, *terms(library, p, n)) for n, t in pts]  # t ~ a alpha + b n x, x = 1/beta
    large = [r for r in rows if r[0] >= LARGE and r[3] > 0]
    small = [r for r in rows if r[0] <= SMALL and r[2] > 0]
    if len(large) >= 2 and small:
        alpha = 0.0
        for _ in range(20):
            v = [b * n / t for n, t, a, b in large]
            rest = [1 - a * alpha / t for n, t, a, b in large]
            x = max(sum(vi * ri for vi, ri in zip(v, rest)) / sum(vi * vi for vi in v), 1e-30)
            new = max(0.0, sorted((t - b * n * x) / a for n, t, a, b in small)[len(small) // 2])
            if abs(new - alpha) <= 1e-6 * max(alpha, 1e-12):
                alpha = new
                break
            alpha = new
    else:
        alpha, x = _joint(rows)
    if x <= 0:
        raise ValueError("the times do not grow with the message size: no bandwidth can be fitted")
    rms = math.sqrt(sum(((a * alpha + b * n * x) / t - 1) ** 2 for n, t, a, b in rows) / len(rows))
    return alpha, 1.0 / x, rms


def _joint(rows):
    """(alpha, 1/beta) minimizing sum ((a alpha + b n x) / t - 1)^2 over every point; alpha >= 0."""
    u = [a / t for n, t, a, b in rows]
    v = [b * n / t for n, t, a, b in rows]
    suu, svv, suv = sum(x * x for x in u), sum(x * x for x in v), sum(x * y for x, y in zip(u, v))
    su, sv = sum(u), sum(v)
    det = suu * svv - suv * suv
    alpha, x = ((su * svv - sv * suv) / det, (sv * suu - su * suv) / det) if det > 0 else (-1.0, 0.0)
    if alpha < 0 or x <= 0:
        alpha, x = 0.0, sv / svv
    return alpha, x
