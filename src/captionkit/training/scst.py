"""Self-critical sequence training (Rennie et al. 2017): fine-tuning on the CIDEr-D of the
model's own captions.

Each training step takes a batch of images, samples K captions per image without gradients (the
batched sampling decoder), rewards each by its CIDEr-D against the image's training references
(document frequencies of the training references; `<eos>` counted as a word, as
self-critical.pytorch does), and subtracts a baseline: the mean reward of the image's other K-1
samples (the "new self-critical" variant) or that of its greedy caption. One teacher-forced pass
with gradients over the sampled captions then gives their log-probabilities, and the loss is
-mean over samples of (r - b) x sum_t log p_t, `<eos>` included. The model is in eval mode for
both passes, so that the log-probabilities are those of the policy that drew the samples.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from captionkit.data.ptb_tokenizer import tokenize
from captionkit.data.vocab import Vocabulary
from captionkit.decoding import DecodingOptions, decode
from captionkit.metrics.cider_d import CiderD
from captionkit.training.config import ScstConfig
from captionkit.training.feature_batches import token_array
from captionkit.training.module import CaptioningModule

EOS_WORD = "<eos>"


def reward_text(text: str) -> str:
    """A caption as the reward scores it: PTB words (as the metrics count them), then `<eos>`,
    so that a caption cut short is not rewarded like a finished one."""
    return " ".join([*tokenize(text), EOS_WORD])


class ScstReward:
    """Reward of sampled captions: CIDEr-D (+ `bleu_weight` x BLEU-4) against the references of
    their images. Built once from the training references (image key -> raw captions), which are
    also the corpus of the CIDEr-D document frequencies."""

    def __init__(self, references: Mapping[Hashable, Sequence[str]], bleu_weight: float = 0.0):
        self.references = {k: [reward_text(c) for c in caps] for k, caps in references.items()}
        self.cider = CiderD(self.references)  # idf from these references: the training corpus
        self.bleu_weight = bleu_weight

    def __call__(self, captions: Sequence[str], keys: Sequence[Hashable]) -> np.ndarray:
        """[N] rewards of raw `captions[i]` (as the tokenizer decodes them) for image `keys[i]`."""
        texts = [reward_text(c) for c in captions]
        rewards = self.cider.score(texts, keys)
        if self.bleu_weight > 0:
            from pycocoevalcap.bleu.bleu import Bleu

            gts = {i: self.references[k] for i, k in enumerate(keys)}
            _, per_caption = Bleu(4).compute_score(
                gts, dict(enumerate([t] for t in texts)), verbose=0
            )
            rewards = rewards + self.bleu_weight * np.asarray(per_caption[3])
        return rewards


def mean_of_others(rewards: torch.Tensor) -> torch.Tensor:
    """rewards [B, K] -> baselines [B, K]: for each sample, the mean reward of the K-1 others."""
    k = rewards.shape[1]
    return (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)


def sampled_tokens(results: list[list], device: torch.device) -> torch.Tensor:
    """Decoded samples (per image, K `DecodingResult`s) -> tokens [B*K, T]: `<bos> w1 .. wn
    <eos> <pad>..`, image by image."""
    seqs = [[Vocabulary.bos_id, *h.tokens, Vocabulary.eos_id] for hyps in results for h in hyps]
    return torch.from_numpy(token_array(seqs).astype(np.int64)).to(device)


def sequence_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [N, T-1, V] of a teacher-forced pass over tokens [N, T] -> (log p of each sampled
    token [N, T-1], 0 after `<eos>`; entropy of each step's distribution [N, T-1], 0 there too).
    `<pad>` and `<bos>` are excluded as the sampling decoder excludes them."""
    logits = logits.float() / temperature
    logits[..., [Vocabulary.pad_id, Vocabulary.bos_id]] = float("-inf")
    logp = F.log_softmax(logits, dim=-1)  # [N, T-1, V]
    targets = tokens[:, 1:]  # [N, T-1]
    mask = targets != Vocabulary.pad_id
    chosen = logp.gather(2, targets.unsqueeze(2)).squeeze(2)  # -inf on padding: masked by where
    chosen = torch.where(mask, chosen, torch.zeros_like(chosen))
    with torch.no_grad():
        entropy = -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1) * mask
    return chosen, entropy


def scst_loss(token_logprobs: torch.Tensor, advantage: torch.Tensor) -> torch.Tensor:
    """-mean over samples of advantage [N] x the sample's log-probability (the sum of
    token_logprobs [N, T], already 0 on padding)."""
    return -(advantage.detach() * token_logprobs.sum(dim=1)).mean()


class ScstModule(CaptioningModule):
    """`CaptioningModule` trained by SCST: batches are images (features, or images with a
    fine-tuned encoder) with their keys; validation as for cross-entropy."""

    def __init__(self, *args, scst: ScstConfig, reward: ScstReward, max_length: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.scst, self.reward, self.max_length = scst, reward, max_length
        self._reward_std: list[float] = []

    def _sample(self, pooled, grid, keys: list[str]):
        """K samples per image (tokens [B*K, T]) and their rewards [B, K]."""
        s = self.scst
        # <unk> allowed: the loss differentiates the model's own, unfiltered distribution.
        options = DecodingOptions(
            sample=True,
            num_samples=s.samples,
            temperature=s.temperature,
            max_length=self.max_length,
            allow_unk=True,
        )
        # Detached: the samples are data; gradients come from the teacher-forced pass.
        results = decode(self.model, pooled.detach(), _detach(grid), options)
        captions = [self.vocab.decode(h.tokens) for hyps in results for h in hyps]
        rewards = self.reward(captions, [k for k in keys for _ in range(s.samples)])
        rewards = torch.tensor(rewards, dtype=torch.float32, device=pooled.device)
        return sampled_tokens(results, pooled.device), rewards.view(len(keys), s.samples)

    def _baseline(self, pooled, grid, keys: list[str], rewards: torch.Tensor) -> torch.Tensor:
        """Baselines [B, K] of rewards [B, K]."""
        if self.scst.baseline == "mean":
            return mean_of_others(rewards)
        options = DecodingOptions(beam_size=1, max_length=self.max_length, allow_unk=True)
        greedy = decode(self.model, pooled.detach(), _detach(grid), options)
        captions = [self.vocab.decode(hyps[0].tokens) for hyps in greedy]
        scores = torch.tensor(self.reward(captions, keys), dtype=torch.float32)
        return scores.to(rewards.device)[:, None].expand_as(rewards)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        if "keys" not in batch:  # every image of the batch became unreadable during the run
            return None
        keys, k = batch["keys"], self.scst.samples
        pooled, grid = self._features(batch)  # [B, D], [B, L, D] | None
        tokens, rewards = self._sample(pooled, grid, keys)  # [B*K, T], [B, K]
        baseline = self._baseline(pooled, grid, keys, rewards)  # [B, K]
        pooled, grid = pooled.repeat_interleave(k, 0), _repeat(grid, k)  # [B*K, D], ..
        was_training = self.model.training
        self.model.eval()  # the policy that sampled: no dropout
        try:
            logits = self.model(pooled, grid, tokens[:, :-1])  # [B*K, T-1, V]
        finally:
            self.model.train(was_training)
        # No regulariser (e.g. doubly stochastic attention) here: the reward is the objective.
        logp, entropy = sequence_logprobs(logits, tokens, self.scst.temperature)
        advantage = (rewards - baseline).view(-1)  # [B*K]
        loss = scst_loss(logp, advantage)
        self._log_step(loss, rewards, baseline, advantage, entropy, tokens)
        return loss

    def _log_step(self, loss, rewards, baseline, advantage, entropy, tokens) -> None:
        n = tokens.shape[0]
        lengths = (tokens[:, 1:] != Vocabulary.pad_id).sum(1).float()  # words + <eos>
        std = rewards.std(dim=1).mean() if rewards.shape[1] > 1 else rewards.new_zeros(())
        self._reward_std.append(float(std))
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/reward", rewards.mean(), prog_bar=True, batch_size=n)
        self.log("train/baseline", baseline.mean(), batch_size=n)
        self.log("train/advantage_std", advantage.std() if n > 1 else 0.0, batch_size=n)
        self.log("train/reward_std", std, batch_size=n)
        self.log("train/entropy", entropy.sum() / lengths.sum(), batch_size=n)
        self.log("train/sample_length", lengths.mean(), batch_size=n)

    def on_train_epoch_end(self) -> None:
        stds, self._reward_std = self._reward_std, []
        if stds and np.mean(stds) < self.scst.collapse_std and self.global_rank == 0:
            warnings.warn(
                f"SCST epoch {self.current_epoch}: the rewards of an image's samples "
                f"differ by {np.mean(stds):.4f} (std) on average, below "
                f"scst.collapse_std {self.scst.collapse_std:g}: the samples have become "
                "alike and learning stalls (raise scst.temperature or lower the "
                "learning rate, and select on val CIDEr)",
                stacklevel=1,
            )


def _detach(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.detach()


def _repeat(x: torch.Tensor | None, k: int) -> torch.Tensor | None:
    return None if x is None else x.repeat_interleave(k, 0)
