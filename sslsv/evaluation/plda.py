"""PLDA back-end: two-covariance PLDA (optionally after LDA) trained on labelled training embeddings, scoring
trials by log-likelihood ratio.

The model (two-covariance PLDA; Brümmer & de Villiers, "The speaker partitioning problem", Odyssey 2010; EM as in
Sizov, Lee & Kinnunen, "Unifying probabilistic linear discriminant analysis variants in biometric
authentication", S+SSPR 2014, Sec. 3): an utterance embedding x of speaker s is

    y_s ~ N(mu, B)          speaker variable (B: between-speaker covariance)
    x   ~ N(y_s, W)         utterance given its speaker (W: within-speaker covariance)

and a trial (e, t) is scored by the log-likelihood ratio of "same speaker" against "different speakers":

    LLR(e, t) = log N([e; t] | [mu; mu], [[B+W, B], [B, B+W]]) - log N(e | mu, B+W) - log N(t | mu, B+W).

`TwoCovariancePLDA.fit` estimates (mu, B, W) by EM; the LLR is computed in the basis that diagonalises B and W
together (B v = lambda W v), where it separates into a per-utterance quadratic term and one weighted dot product
per trial, so a trial list costs what cosine scoring costs (no Python loop over trials or speakers: speakers with
the same number of utterances share one posterior covariance).

`PLDA` is the back-end: embeddings are L2-normalised, centred on the training mean, optionally projected by LDA
to `lda_dim` dimensions (scikit-learn's LinearDiscriminantAnalysis), whitened by the training covariance
(directions without variance dropped, and at most N - S kept for N utterances of S speakers, by decreasing
variance), length-normalised to sqrt(dim) (Garcia-Romero & Espy-Wilson, "Analysis of
i-vector length normalization in speaker recognition systems", Interspeech 2011), then modelled by the
two-covariance PLDA.

Why it is written here: no maintained Python package provides two-covariance PLDA on its own. The `plda` PyPI
package is unrelated (parallel LDA topic models), GitHub PLDA repositories are unmaintained, and SpeechBrain,
pyannote or Kaldi would bring a whole toolkit for ~100 lines of numpy/scipy. LDA comes from scikit-learn, already
a dependency.

Training labels are supervision: with the training manifest's Speaker column the result is not a purely
self-supervised one; pseudo-labels (a pseudo-label manifest's cluster ids) keep it label-free.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.linalg

__all__ = ["PLDA", "PLDAError", "TwoCovariancePLDA"]


class PLDAError(ValueError):
    """Training data a PLDA cannot be estimated from (too few speakers, an LDA dimension too large, ...)."""


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _utterance_vectors(embeddings) -> np.ndarray:
    """(U, D) float64: the embeddings, or for (U, N, D) crop embeddings the mean of each utterance's L2-normalised
    crops (the vector multi-crop scoring and the cohort use for an utterance)."""
    x = _as_numpy(embeddings)
    if x.ndim == 3:
        x = (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).mean(axis=1)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (U, D) or (U, N, D), got shape {x.shape}")
    return x


def _unit_rows(x: np.ndarray, scale: float = 1.0) -> np.ndarray:
    return x * (scale / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))


def _symmetric(a: np.ndarray) -> np.ndarray:
    return 0.5 * (a + a.T)


def _floor(cov: np.ndarray, minimum: float) -> np.ndarray:
    """The covariance with its eigenvalues raised to at least `minimum` (positive definite)."""
    values, vectors = np.linalg.eigh(_symmetric(cov))
    return (vectors * np.maximum(values, minimum)) @ vectors.T


@dataclass
class TwoCovariancePLDA:
    """Two-covariance PLDA: x = y_speaker + noise, y ~ N(mean, between), noise ~ N(0, within).

    Attributes:
        mean: (d,) mu.
        between: (d, d) B, between-speaker covariance.
        within: (d, d) W, within-speaker covariance.
        log_likelihoods: training-data log-likelihood after each EM iteration (non-decreasing).
    """

    mean: np.ndarray
    between: np.ndarray
    within: np.ndarray
    log_likelihoods: list[float] = field(default_factory=list)

    @classmethod
    def fit(cls, x, labels, iterations: int = 10, floor: float = 1e-6) -> TwoCovariancePLDA:
        """Maximum-likelihood (mu, B, W) by EM (Sizov et al. 2014, Sec. 3), started from the sample statistics
        (mean of the speaker means, covariance of the speaker means, pooled within-speaker covariance).

        Args:
            x: (N, d) embeddings.
            labels: (N,) speaker of each row (any hashable values).
            iterations: EM iterations.
            floor: eigenvalues of B and W are kept above floor x the largest eigenvalue of the data's covariance
                (so B W^-1 stays bounded by ~1/floor: a direction without within-speaker variation in the
                training data, e.g. after length-normalising 1-dimensional LDA outputs, cannot give infinite
                LLRs).

        Raises:
            PLDAError: fewer than 2 speakers, or no speaker with 2 utterances (no within-speaker variation).
        """
        x = _as_numpy(x)
        _, speaker = np.unique(np.asarray(labels), return_inverse=True)
        speaker = speaker.reshape(-1)
        if x.ndim != 2 or len(speaker) != x.shape[0]:
            raise ValueError(f"PLDA needs (N, d) embeddings and N labels, got {x.shape} and {len(speaker)}")
        counts = np.bincount(speaker)
        if len(counts) < 2 or counts.max() < 2:
            raise PLDAError(f"PLDA needs at least 2 speakers and a speaker with 2 utterances, got {len(counts)} "
                            f"speaker(s) and at most {counts.max()} utterance(s) per speaker")
        num, dim = x.shape
        floor = floor * max(np.linalg.eigvalsh(np.cov(x, rowvar=False, bias=True).reshape(dim, dim)).max(), 1e-300)
        sums = np.zeros((len(counts), dim))
        np.add.at(sums, speaker, x)
        means = sums / counts[:, None]
        mean = means.mean(axis=0)
        between = _floor(np.cov(means, rowvar=False, bias=True).reshape(dim, dim), floor)
        residual = x - means[speaker]
        within = _floor(residual.T @ residual / num, floor)
        scatter = x.T @ x
        model = cls(mean, between, within)
        groups = [(n, np.flatnonzero(counts == n)) for n in np.unique(counts)]
        for _ in range(iterations):
            # E-step: posterior of each speaker variable, N(E[y], C_n) with C_n = (B^-1 + n W^-1)^-1 shared by
            # every speaker with n utterances, E[y] = C_n (B^-1 mu + W^-1 f) for the sum f of its utterances.
            b_inv, w_inv = np.linalg.inv(model.between), np.linalg.inv(model.within)
            prior = b_inv @ model.mean
            expected = np.empty_like(sums)
            second = np.zeros((dim, dim))      # sum over speakers of E[y y^T]
            weighted = np.zeros((dim, dim))    # sum over speakers of n E[y y^T]
            for n, rows in groups:
                posterior = np.linalg.inv(b_inv + n * w_inv)
                ey = (prior + sums[rows] @ w_inv) @ posterior
                expected[rows] = ey
                second += len(rows) * posterior + ey.T @ ey
                weighted += n * (len(rows) * posterior + ey.T @ ey)
            # M-step.
            speakers = len(counts)
            mean = expected.mean(axis=0)
            between = _floor(second / speakers - np.outer(mean, mean), floor)
            cross = sums.T @ expected
            within = _floor((scatter - cross - cross.T + weighted) / num, floor)
            model = cls(mean, between, within, model.log_likelihoods)
            model.log_likelihoods.append(model.log_likelihood(x, speaker))
        return model

    def log_likelihood(self, x, labels) -> float:
        """log p(x) of labelled data under the model (speaker variables integrated out), per utterance.

        Per speaker with n utterances and sum f, in the basis where W = I and B = diag(psi): each dimension is a
        Gaussian vector with covariance I + psi 11^T, whose log-density has a closed form."""
        x = _as_numpy(x)
        _, speaker = np.unique(np.asarray(labels), return_inverse=True)
        speaker = speaker.reshape(-1)
        vectors, psi = self._diagonal_basis()
        u = (x - self.mean) @ vectors
        counts = np.bincount(speaker)
        sums = np.zeros((len(counts), u.shape[1]))
        np.add.at(sums, speaker, u)
        # log|I + psi 11^T| = log(1 + n psi); quadratic form u^T u - psi / (1 + n psi) (1^T u)^2; the change of
        # variables x -> u adds log|det V| per utterance.
        n = counts[:, None]
        logdet = np.log1p(n * psi).sum()
        quadratic = (u ** 2).sum() - (psi / (1 + n * psi) * sums ** 2).sum()
        jacobian = np.linalg.slogdet(vectors)[1]
        total = -0.5 * (x.size * np.log(2 * np.pi) + logdet + quadratic) + x.shape[0] * jacobian
        return float(total / x.shape[0])

    def _diagonal_basis(self) -> tuple[np.ndarray, np.ndarray]:
        """V and psi with V^T W V = I and V^T B V = diag(psi) (generalised eigenproblem B v = psi W v)."""
        psi, vectors = scipy.linalg.eigh(_symmetric(self.between), _symmetric(self.within))
        return vectors, np.maximum(psi, 0.0)

    def scorer(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """(V, quadratic weights q, cross weights p, constant) with, for u = (x - mu) V,
        LLR(e, t) = sum_d q_d (u_e,d^2 + u_t,d^2) + sum_d p_d u_e,d u_t,d + constant.

        Per dimension, with total variance t = psi + 1 and det = t^2 - psi^2 = 1 + 2 psi:
        q = 1/(2t) - t/(2 det), p = psi / det, constant = -1/2 sum log(det / t^2)."""
        vectors, psi = self._diagonal_basis()
        total = psi + 1
        det = 1 + 2 * psi
        return vectors, 0.5 / total - 0.5 * total / det, psi / det, float(-0.5 * np.log(det / total ** 2).sum())

    def llr(self, x, enroll_idx, test_idx, batch: int = 200_000) -> np.ndarray:
        """(T,) float64 LLRs of the trials (rows enroll_idx[i], test_idx[i] of x (U, d)), in chunks of trials."""
        vectors, q, p, constant = self.scorer()
        u = (_as_numpy(x) - self.mean) @ vectors
        own = (u ** 2) @ q
        enroll_idx, test_idx = np.asarray(enroll_idx, dtype=np.int64), np.asarray(test_idx, dtype=np.int64)
        if len(enroll_idx) != len(test_idx):
            raise ValueError(f"enrolment and test index arrays differ in length: {len(enroll_idx)} vs {len(test_idx)}")
        for idx in (enroll_idx, test_idx):
            if len(idx) and (idx.min() < 0 or idx.max() >= len(u)):
                raise IndexError(f"trial index outside [0, {len(u)})")
        scores = np.empty(len(enroll_idx))
        weighted = u * p
        for start in range(0, len(enroll_idx), batch):
            e, t = enroll_idx[start:start + batch], test_idx[start:start + batch]
            scores[start:start + batch] = np.einsum("ij,ij->i", weighted[e], u[t]) + own[e] + own[t] + constant
        return scores


@dataclass
class PLDA:
    """The PLDA back-end: preprocessing learnt on training embeddings, then a two-covariance PLDA.

    Attributes:
        center: (D,) mean of the L2-normalised training embeddings.
        lda: the fitted scikit-learn LinearDiscriminantAnalysis, or None.
        whitener: (D', d) whitening projection (the d <= N - S directions of the training data with the most
            variance).
        model: the two-covariance PLDA on the whitened, length-normalised embeddings.
        speakers: number of training speakers; utterances: number of training utterances.
    """

    center: np.ndarray
    lda: object | None
    whitener: np.ndarray
    model: TwoCovariancePLDA
    speakers: int
    utterances: int

    @property
    def dim(self) -> int:
        """d, the dimension the PLDA models."""
        return int(self.whitener.shape[1])

    @classmethod
    def train(cls, embeddings, labels, lda_dim: int | None = None, iterations: int = 10) -> PLDA:
        """Train the back-end on (N, D) embeddings (or (N, K, D) crops, averaged) with (N,) speaker labels.

        Raises:
            PLDAError: fewer than 2 speakers, no speaker with 2 utterances, lda_dim not in [1, speakers - 1].
        """
        x = _unit_rows(_utterance_vectors(embeddings))
        labels = np.asarray(labels)
        if len(labels) != len(x):
            raise ValueError(f"{len(labels)} labels for {len(x)} PLDA training embeddings")
        speakers = len(np.unique(labels))
        if speakers < 2:
            raise PLDAError(f"PLDA needs training utterances of at least 2 speakers, got {speakers}")
        center = x.mean(axis=0)
        x = x - center
        lda = None
        if lda_dim is not None:
            limit = min(speakers - 1, x.shape[1])
            if not 1 <= lda_dim <= limit:
                raise PLDAError(f"the LDA dimension must be between 1 and {limit} (training speakers - 1, "
                                f"embedding size), got {lda_dim}")
            from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

            lda = LinearDiscriminantAnalysis(n_components=lda_dim, solver="svd").fit(x, labels)
            x = lda.transform(x)
        # Whitening keeps the directions with variance, at most N - S of them: the within-speaker degrees of
        # freedom of the training set (more would have no within-speaker variation at all).
        values, vectors = np.linalg.eigh(np.cov(x, rowvar=False, bias=True).reshape(x.shape[1], x.shape[1]))
        keep = np.flatnonzero(values > 1e-10 * values.max())[::-1][:max(len(labels) - speakers, 1)]
        whitener = vectors[:, keep] / np.sqrt(values[keep])
        x = _unit_rows(x @ whitener, np.sqrt(whitener.shape[1]))
        model = TwoCovariancePLDA.fit(x, labels, iterations)
        return cls(center, lda, whitener, model, speakers, len(labels))

    def transform(self, embeddings) -> np.ndarray:
        """(U, d): embeddings (or crops, averaged) L2-normalised, centred, LDA-projected, whitened and
        length-normalised like the training data."""
        x = _unit_rows(_utterance_vectors(embeddings)) - self.center
        if self.lda is not None:
            x = self.lda.transform(x)
        return _unit_rows(x @ self.whitener, np.sqrt(self.dim))

    def score(self, embeddings, enroll_idx, test_idx) -> np.ndarray:
        """(T,) float32 PLDA log-likelihood ratios of the trials (rows of `embeddings`, (U, D) or (U, N, D))."""
        return self.model.llr(self.transform(embeddings), enroll_idx, test_idx).astype(np.float32)
