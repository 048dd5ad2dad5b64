"""Source of notebooks/01_aggregation_broadcast.ipynb (build with python notebooks/_build.py)."""

# %% [markdown]
# # 01 · Aggregation and broadcast: SP, PS and the two mismatches
#
# In LoRA federated learning every client $i = 1..m$ trains low-rank factors
# $B_i \in \mathbb{R}^{d\times r}$, $A_i \in \mathbb{R}^{r\times k}$ of an update $B_i A_i$ to a frozen
# weight $W_0 \in \mathbb{R}^{d \times k}$. The server then has to send back **factors**, not a dense
# matrix, so that clients keep training in rank $r$. The map from the clients' factors and weights
# $p_i \ge 0$, $\sum_i p_i = 1$, to the broadcast $(P, Q)$ is an **aggregation-broadcast operator**
# (ABO, Chen et al., [arXiv:2508.01348](https://arxiv.org/abs/2508.01348)).
#
# This notebook writes out the two families of the paper, measures how far each broadcast is from the
# clients, derives the exact decompositions of those distances (identities 1-5 of `DESIGN.md`) and
# checks every one numerically with `abo_jax` and `theory` in float64. Change the inputs in the next
# code cell and re-run: every check must still pass.
#
# Notation: $\bar Z = \sum_i p_i B_i A_i$ (average product), $\bar B = \sum_i p_i B_i$,
# $\bar A = \sum_i p_i A_i$ (average factors), $\|\cdot\|$ the Frobenius norm.

# %%
import jax

jax.config.update("jax_enable_x64", True)  # the identities below are checked in float64

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import abo_jax as abo
import theory

# %% [markdown]
# ## Inputs you can change
#
# Clients start from one shared pair $(B_0, A_0)$ and **drift** apart: $B_i = B_0 + \delta U_i$,
# $A_i = A_0 + \delta V_i$ with Gaussian $U_i, V_i$ (the picture of local training from a common
# broadcast, with $\delta$ playing the role of the distance travelled). `drift` is $\delta$.

# %%
m, d, k, r = 5, 30, 20, 2  # clients, out, in, rank (m r < min(d, k): SP uses the stacked path)
drift = 0.3
seed = 0


def drifted_clients(key, *, m, d, k, r, drift):
    """Stacked client factors b (m, d, r), a (m, r, k) around a shared (B_0, A_0)."""
    k0, k1, k2, k3 = jax.random.split(key, 4)
    b0 = jax.random.normal(k0, (d, r)) / np.sqrt(r)
    a0 = jax.random.normal(k1, (r, k)) / np.sqrt(k)
    b = b0 + drift * jax.random.normal(k2, (m, d, r)) / np.sqrt(r)
    a = a0 + drift * jax.random.normal(k3, (m, r, k)) / np.sqrt(k)
    return abo.LoRAFactors(b=b, a=a)


key = jax.random.key(seed)
f = drifted_clients(key, m=m, d=d, k=k, r=r, drift=drift)
clients = {"w": f}  # any pytree with LoRAFactors leaves; here one adapted layer
p = jax.random.dirichlet(jax.random.fold_in(key, 1), jnp.ones(m))  # weights, sum 1
B, A, P_w = np.asarray(f.b), np.asarray(f.a), np.asarray(p)
print("weights p =", np.round(P_w, 3), " sum =", P_w.sum())

# %% [markdown]
# ## The ABO signature, SP and PS
#
# An ABO is a pair of pure functions: `state = op.init(clients, key=key)` and
# `broadcast, state, diagnostics = op.aggregate(clients, weights, state)`. A global operator (SP, PS
# and every operator that sends all clients the same start) returns ONE copy in `broadcast.factors`,
# the clients' shapes without the client axis; a personalized or heterogeneous-rank one returns one
# start per client, `(m, ...)`, and says so in its `traits`.
#
# **SP (Sum-Product, sum of products).** Average the products, then factor their best rank-$r$
# approximation, splitting the singular values evenly:
# $$\bar Z = \sum_i p_i B_i A_i = U S V^\top, \qquad P_{SP} = U_r S_r^{1/2},\quad Q_{SP} = S_r^{1/2} V_r^\top .$$
#
# **PS (Product-Sum, product of sums).** Average each factor:
# $$P_{PS} = \bar B = \sum_i p_i B_i, \qquad Q_{PS} = \bar A = \sum_i p_i A_i .$$
#
# Check both against NumPy closed forms. SP's factors are defined only up to the signs and rotations
# of the SVD, so SP is compared **by its product** (identity 9 of `DESIGN.md`).

# %%
sp, ps = abo.sum_product(), abo.product_sum()
bc_sp, _, diag_sp = sp.aggregate(clients, p, sp.init(clients))
bc_ps, _, diag_ps = ps.aggregate(clients, p, ps.init(clients))

zbar = np.einsum("c,cdr,crk->dk", P_w, B, A)
u, s, vt = np.linalg.svd(zbar)
best_r = (u[:, :r] * s[:r]) @ vt[:r]  # the best rank-r approximation of Zbar

P_sp, Q_sp = np.asarray(bc_sp.factors["w"].b), np.asarray(bc_sp.factors["w"].a)
P_ps, Q_ps = np.asarray(bc_ps.factors["w"].b), np.asarray(bc_ps.factors["w"].a)
np.testing.assert_allclose(P_sp @ Q_sp, best_r, rtol=1e-10, atol=1e-12)
np.testing.assert_allclose(P_ps, np.einsum("c,cdr->dr", P_w, B), rtol=1e-12)
np.testing.assert_allclose(Q_ps, np.einsum("c,crk->rk", P_w, A), rtol=1e-12)
# one pair that every client receives: the clients' shapes without the client axis
assert P_sp.shape == P_ps.shape == B.shape[1:] and Q_sp.shape == Q_ps.shape == A.shape[1:]
assert sp.traits.one_start and ps.traits.one_start
print("SP product == rank-r SVD of Zbar; PS factors == weighted means")
print("diagnostics of SP:", {k_: np.asarray(v) for k_, v in diag_sp.items()})

# %% [markdown]
# ## The two mismatches
#
# How far is the broadcast from what each client had? Two ways to measure it (our formalization of the
# paper's conditions, `DESIGN.md`):
#
# * **weak (product) mismatch** $\;R_w(P, Q) = \sum_i p_i \|P Q - B_i A_i\|^2$: distance in the space
#   of updates $\Delta W$, which is what the model computes with;
# * **strong (factor) mismatch** $\;R_B(P) = \sum_i p_i \|P - B_i\|^2$,
#   $\;R_A(Q) = \sum_i p_i \|Q - A_i\|^2$: distance in the space of factors, which is where local SGD
#   actually moves.
#
# `theory.weak_mismatch` and `theory.strong_mismatch` compute them (per layer and summed, without
# forming $d\times k$ matrices when that is cheaper). Check them against the definitions.


# %%
def rw_numpy(P, Q):
    return float(np.sum(P_w * np.sum((P @ Q - np.einsum("cdr,crk->cdk", B, A)) ** 2, axis=(1, 2))))


def rb_ra_numpy(P, Q):
    rb = np.sum(P_w * np.sum((P[None] - B) ** 2, axis=(1, 2)))
    ra = np.sum(P_w * np.sum((Q[None] - A) ** 2, axis=(1, 2)))
    return float(rb), float(ra)


for name, bc, (P_, Q_) in [("SP", bc_sp, (P_sp, Q_sp)), ("PS", bc_ps, (P_ps, Q_ps))]:
    rw = float(theory.weak_mismatch(clients, p, bc).total)
    rb, ra = (float(x.total) for x in theory.strong_mismatch(clients, p, bc))
    np.testing.assert_allclose(rw, rw_numpy(P_, Q_), rtol=1e-10)
    np.testing.assert_allclose((rb, ra), rb_ra_numpy(P_, Q_), rtol=1e-10)
    print(f"{name}: R_w = {rw:.5f}   R_B = {rb:.5f}   R_A = {ra:.5f}")

# %% [markdown]
# ## Identity 1: the weak mismatch splits at $\bar Z$
#
# For **any** $(P, Q)$, add and subtract $\bar Z$:
# $$\|PQ - B_iA_i\|^2 = \|PQ - \bar Z\|^2 + 2\langle PQ - \bar Z,\ \bar Z - B_iA_i\rangle + \|\bar Z - B_iA_i\|^2 .$$
# Averaged with the weights, the cross term is
# $2\langle PQ - \bar Z,\ \bar Z - \sum_i p_i B_iA_i\rangle = 0$ because $\sum_i p_i = 1$. So
# $$R_w(P, Q) = R_w^* + \|PQ - \bar Z\|^2, \qquad R_w^* = \sum_i p_i\|\bar Z - B_iA_i\|^2 ,$$
# a bias-variance split: $R_w^*$ is the clients' own spread (no server can remove it) and
# $\|PQ - \bar Z\|^2$ is the server's product error. The unconstrained optimum is $PQ = \bar Z$, which
# a rank-$r$ broadcast can reach only when $\mathrm{rank}\,\bar Z \le r$.

# %%
rng = np.random.default_rng(seed)
P_rand, Q_rand = rng.normal(size=(d, r)), rng.normal(size=(r, k))  # an arbitrary broadcast
rw_star = float(theory.weak_optimum(clients, p).total)
for name, (P_, Q_) in [("random", (P_rand, Q_rand)), ("SP", (P_sp, Q_sp)), ("PS", (P_ps, Q_ps))]:
    lhs = rw_numpy(P_, Q_)
    rhs = rw_star + np.sum((P_ @ Q_ - zbar) ** 2)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-10)
    print(f"identity 1 ({name:6s}): R_w = {lhs:.6f} = R_w* + ||PQ - Zbar||^2 = {rhs:.6f}")

# %% [markdown]
# ## Identities 2 and 3: SP discards exactly the singular-value tail, and that is optimal
#
# By Eckart-Young, the best rank-$r$ approximation of $\bar Z$ in Frobenius norm is its truncated SVD,
# with error $\|\bar Z - P_{SP}Q_{SP}\|^2 = \sum_{j>r} s_j(\bar Z)^2 =: \mathrm{tail}_r$. With
# identity 1:
# $$R_w(SP) = R_w^* + \mathrm{tail}_r = \min_{\mathrm{rank}(PQ)\le r} R_w(P, Q)
# \quad\Longrightarrow\quad R_w(SP) \le R_w(PS) .$$
# SP reports the tail it discarded in its diagnostics (`sp_tail`, per layer), and `theory.sp_tail`
# computes it from the stacked factors ($\bar Z = [p_1B_1 \cdots p_mB_m][A_1;\dots;A_m]$ has rank at
# most $mr$, so only an $mr\times mr$ SVD is needed).

# %%
tail_np = float(np.sum(s[r:] ** 2))
np.testing.assert_allclose(float(theory.sp_tail(clients, p).total), tail_np, rtol=1e-9)
np.testing.assert_allclose(float(diag_sp["sp_tail"][0]), tail_np, rtol=1e-9)
np.testing.assert_allclose(rw_numpy(P_sp, Q_sp), rw_star + tail_np, rtol=1e-10)  # identity 2

# identity 3: no rank-r broadcast does better than SP; try PS and many perturbations of SP
candidates = [(P_ps, Q_ps), (P_rand, Q_rand)]
candidates += [
    (P_sp + 0.05 * rng.normal(size=(d, r)), Q_sp + 0.05 * rng.normal(size=(r, k)))
    for _ in range(200)
]
rw_sp = rw_numpy(P_sp, Q_sp)
assert all(rw_sp <= rw_numpy(P_, Q_) * (1 + 1e-12) for P_, Q_ in candidates)
print(f"tail_r = {tail_np:.3e};  R_w(SP) = {rw_sp:.5f} <= R_w(PS) = {rw_numpy(P_ps, Q_ps):.5f}")
print(f"rank of Zbar: {np.sum(s > 1e-12 * s[0])} (at most m r = {m * r})")

# %% [markdown]
# ## Identity 4: PS's aggregation error is a covariance
#
# PS misses the average product by $\bar Z - \bar B\bar A$. Expanding the weighted covariance of the
# factors, with $\sum_i p_i = 1$:
# $$\sum_i p_i (B_i - \bar B)(A_i - \bar A)
# = \sum_i p_iB_iA_i - \bar B\bar A - \bar B\bar A + \bar B\bar A = \bar Z - \bar B\bar A .$$
# So PS is exact whenever the factors do not co-vary across clients: one client, all $A_i$ equal, or
# all $B_i$ equal (identity 8) — whatever their rank. And with identity 1,
# $R_w(PS) = R_w^* + \|\sum_i p_i (B_i-\bar B)(A_i-\bar A)\|^2$. `theory.ps_aggregation_error`
# returns the covariance form (no cancellation), `theory.ps_aggregation_error_norm` its squared norm.

# %%
cov = np.einsum("c,cdr,crk->dk", P_w, B - P_ps[None], A - Q_ps[None])
np.testing.assert_allclose(cov, zbar - P_ps @ Q_ps, rtol=1e-9, atol=1e-13)
np.testing.assert_allclose(
    np.asarray(theory.ps_aggregation_error(clients, p)[0]), cov, rtol=1e-9, atol=1e-13
)
ps_err = float(theory.ps_aggregation_error_norm(clients, p).total)
np.testing.assert_allclose(rw_numpy(P_ps, Q_ps), rw_star + ps_err, rtol=1e-10)

# exactness: all A_i equal makes PS exact although the B_i differ
same_a = {"w": abo.LoRAFactors(f.b, jnp.broadcast_to(f.a[:1], f.a.shape))}
print(
    f"||Zbar - Bbar Abar||^2 = {ps_err:.3e};  with all A_i equal: "
    f"{float(theory.ps_aggregation_error_norm(same_a, p).total):.1e}"
)

# %% [markdown]
# ## Identity 5: PS minimizes the strong mismatch
#
# The same bias-variance argument in factor space: for any $P$,
# $$R_B(P) = \sum_i p_i\|P - \bar B + \bar B - B_i\|^2 = \|P - \bar B\|^2 + R_B^*,
# \qquad R_B^* = \sum_i p_i \|B_i - \bar B\|^2 ,$$
# the cross term vanishing because $\sum_i p_i(\bar B - B_i) = 0$; likewise for $A$. PS
# ($P = \bar B$, $Q = \bar A$) attains $(R_B^*, R_A^*)$ — the strong optimum — while SP is off by
# $\|P_{SP} - \bar B\|^2$, which no amount of product accuracy removes.

# %%
(rbs, ras) = (float(x.total) for x in theory.strong_optimum(clients, p))
for name, (P_, Q_) in [("random", (P_rand, Q_rand)), ("SP", (P_sp, Q_sp)), ("PS", (P_ps, Q_ps))]:
    rb, ra = rb_ra_numpy(P_, Q_)
    np.testing.assert_allclose(rb, rbs + np.sum((P_ - P_ps) ** 2), rtol=1e-10)
    np.testing.assert_allclose(ra, ras + np.sum((Q_ - Q_ps) ** 2), rtol=1e-10)
    print(f"identity 5 ({name:6s}): R_B = {rb:9.5f} = R_B* + ||P - Bbar||^2,  R_A = {ra:9.5f}")
print(f"strong optimum: R_B* = {rbs:.5f}, R_A* = {ras:.5f} (attained by PS)")

# %% [markdown]
# ## Identity 7: SP lives in product space, PS in factor space
#
# A client's update $B_iA_i$ does not determine its factors: for any invertible $G_i$,
# $(B_iG_i,\ G_i^{-1}A_i)$ gives the same product (a *gauge* transformation). SP reads the clients only
# through $\bar Z = \sum_i p_i (B_iG_i)(G_i^{-1}A_i)$, so its broadcast product is gauge invariant:
# SP is a function on **product space**. PS averages the factors themselves, so a change of gauge on
# one client changes $\bar B$, $\bar A$ and the broadcast product: PS is a **factor-space** operator.
# That is why the natural yardstick for SP is the weak mismatch and for PS the strong one.

# %%
gauge_key = jax.random.fold_in(key, 2)
G = jnp.eye(r) + 0.5 * jax.random.normal(gauge_key, (m, r, r)) / np.sqrt(r)  # invertible a.s.
regauged = {"w": abo.LoRAFactors(jnp.einsum("cdr,crs->cds", f.b, G), jnp.linalg.solve(G, f.a))}
np.testing.assert_allclose(  # the clients' products are unchanged
    jnp.einsum("cdr,crk->cdk", *regauged["w"]),
    jnp.einsum("cdr,crk->cdk", f.b, f.a),
    rtol=1e-9,
    atol=1e-12,
)


def broadcast_product(op, cl):
    bc, _, _ = op.aggregate(cl, p, op.init(cl))
    return np.asarray(bc.factors["w"].b @ bc.factors["w"].a)


sp_change = np.linalg.norm(broadcast_product(sp, regauged) - broadcast_product(sp, clients))
ps_change = np.linalg.norm(broadcast_product(ps, regauged) - broadcast_product(ps, clients))
assert sp_change <= 1e-9 * np.linalg.norm(zbar) and ps_change > 1e-3
print(f"change of the broadcast product under a re-gauge: SP {sp_change:.1e}, PS {ps_change:.3f}")

# %% [markdown]
# The converse (identity 8): identical clients give $R_w = 0$ for both operators, but SP re-gauges
# the factors through the SVD, so its **factor** mismatch stays positive even with zero drift. SP
# does not satisfy the strong condition, not even in this trivial case.

# %%
same = {
    "w": abo.LoRAFactors(jnp.broadcast_to(f.b[:1], f.b.shape), jnp.broadcast_to(f.a[:1], f.a.shape))
}
for name, op in [("SP", sp), ("PS", ps)]:
    bc, _, _ = op.aggregate(same, p, op.init(same))
    rw = float(theory.weak_mismatch(same, p, bc).total)
    rb, ra = (float(x.total) for x in theory.strong_mismatch(same, p, bc))
    print(f"identical clients, {name}: R_w = {rw:.1e}   R_B + R_A = {rb + ra:.3e}")

# %% [markdown]
# ## Picture 1: the singular-value tail SP discards
#
# $\bar Z$ has rank up to $mr$; SP keeps the top $r$ singular values. With no drift $\bar Z$ has rank
# $r$ and nothing is lost; as clients drift apart, energy spreads into directions $r+1..mr$.

# %%
drifts_shown = [0.0, 0.1, 0.3, 1.0]
fig, ax = plt.subplots(figsize=(6, 3))
for dr in drifts_shown:
    fd = drifted_clients(key, m=m, d=d, k=k, r=r, drift=dr)
    sv = np.linalg.svd(np.einsum("c,cdr,crk->dk", P_w, fd.b, fd.a), compute_uv=False)[: m * r]
    ax.semilogy(np.arange(1, m * r + 1), np.maximum(sv, 1e-16), "o-", ms=3, label=f"drift {dr}")
ax.axvspan(r + 0.5, m * r + 0.5, color="grey", alpha=0.15, label="discarded by SP")
ax.set(
    xlabel="index j",
    ylabel=r"$s_j(\bar Z)$",
    ylim=(1e-6, None),
    title="singular values of the average product",
)
ax.legend(fontsize=7)
plt.show()

# %% [markdown]
# ## Picture 2: what each operator loses as clients drift apart
#
# Over a sweep of $\delta$: the irreducible spread $R_w^*$, SP's excess $R_w(SP) - R_w^* =
# \mathrm{tail}_r$ and PS's excess $R_w(PS) - R_w^* = \|\bar Z - \bar B\bar A\|^2$ (identities 1, 2,
# 4, checked at every point). A first-order look explains the slopes: $\bar Z = (B_0 + \delta\bar U)(A_0
# + \delta\bar V) + \delta^2(\cdot)$, so $\bar Z$ is rank $r$ up to $O(\delta^2)$ and both excesses are
# $O(\delta^4)$, while the spread $R_w^*$ is $O(\delta^2)$. Both operators are near-exact for small drift;
# they differ in the constant, which is what the convergence conditions are about (notebook 02).

# %%
sp_jit, ps_jit = jax.jit(sp.aggregate), jax.jit(ps.aggregate)  # one compile for the whole sweep
deltas = np.logspace(-3, 0, 10)
rows = []
for dr in deltas:
    cl = {"w": drifted_clients(key, m=m, d=d, k=k, r=r, drift=dr)}
    rw_opt = float(theory.weak_optimum(cl, p).total)
    rw_sp_ = float(theory.weak_mismatch(cl, p, sp_jit(cl, p, sp.init(cl))[0]).total)
    rw_ps_ = float(theory.weak_mismatch(cl, p, ps_jit(cl, p, ps.init(cl))[0]).total)
    tail, pserr = (
        float(theory.sp_tail(cl, p).total),
        float(theory.ps_aggregation_error_norm(cl, p).total),
    )
    np.testing.assert_allclose(rw_sp_ - rw_opt, tail, rtol=1e-6, atol=1e-14 * max(rw_opt, 1e-30))
    np.testing.assert_allclose(rw_ps_ - rw_opt, pserr, rtol=1e-6, atol=1e-14 * max(rw_opt, 1e-30))
    rows.append((rw_opt, tail, pserr))
rw_opt, tail, pserr = np.array(rows).T

slope = lambda y: np.polyfit(np.log(deltas[:5]), np.log(y[:5]), 1)[0]
print(
    f"log-log slopes at small drift: R_w* {slope(rw_opt):.2f}, SP tail {slope(tail):.2f}, PS error {slope(pserr):.2f}"
)
fig, ax = plt.subplots(figsize=(6, 3))
ax.loglog(deltas, rw_opt, "k-", label=r"$R_w^*$ (client spread)")
ax.loglog(deltas, tail, "o-", ms=3, label=r"SP: tail$_r$")
ax.loglog(deltas, pserr, "s-", ms=3, label=r"PS: $\|\bar Z - \bar B \bar A\|^2$")
ax.set(
    xlabel=r"drift $\delta$",
    ylabel="squared Frobenius norm",
    title="excess weak mismatch over $R_w^*$",
)
ax.legend(fontsize=7)
plt.show()

# %% [markdown]
# ## Summary
#
# | | SP (sum of products) | PS (product of sums) |
# |---|---|---|
# | broadcast | $\mathrm{SVD}_r(\bar Z)$ split by $\sqrt{S}$ | $(\bar B, \bar A)$ |
# | weak mismatch | $R_w^* + \mathrm{tail}_r$ — optimal over rank $r$ | $R_w^* + \|\sum_i p_i(B_i-\bar B)(A_i-\bar A)\|^2$ |
# | strong mismatch | $R_B^* + \|P_{SP} - \bar B\|^2 > $ optimum, even at zero drift | $(R_B^*, R_A^*)$ — optimal |
# | invariance | gauge invariant (product space) | not gauge invariant (factor space) |
# | exact when | $\mathrm{rank}\,\bar Z \le r$ | one client, all $A_i$ or all $B_i$ equal |
#
# Next: notebook 02 turns these mismatches into the constants of a convergence rate.
