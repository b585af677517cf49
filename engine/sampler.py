from __future__ import annotations

import torch

from tunekv.engine.request import Request


class Sampler:
    """Greedy, temperature, top-k and top-p sampling for a batch of last-token logits.

    Sampling uses the exponential race (argmax of p / Exp(1) noise). A request with its own
    ``seed`` draws the noise for its n-th output token from a generator seeded by (seed, n), so
    it gets the same tokens in any batch and after any preemption (recompute replays nothing).
    """

    def __init__(self, device: torch.device, seed: int) -> None:
        self.device = device
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self._token_generator = torch.Generator(device=device)

    def __call__(self, logits: torch.Tensor, requests: list[Request]) -> list[int]:
        params = [r.sampling_params for r in requests]
        masked = [(i, sorted(r.stop_ids)) for i, r in enumerate(requests)
                  if r.stop_floor > r.num_prompt_tokens and r.num_tokens < r.stop_floor and r.stop_ids]
        if masked:  # min_tokens: EOS and the stop tokens cannot be sampled yet
            logits = logits.clone()
            for i, ids in masked:
                logits[i, ids] = float("-inf")
        if all(p.greedy for p in params):
            return logits.argmax(dim=-1).tolist()
        logits = logits.float()
        greedy = torch.tensor([p.greedy for p in params], device=logits.device)
        temps = torch.tensor([p.temperature if not p.greedy else 1.0 for p in params],
                             device=logits.device, dtype=torch.float32)
        scaled = logits / temps[:, None]
        if any(p.top_k > 0 or p.top_p < 1.0 for p in params):
            scaled = self._filter(scaled, params)
        probs = torch.softmax(scaled, dim=-1)
        noise = torch.empty_like(probs)
        noise.exponential_(generator=self.generator)
        for i, request in enumerate(requests):
            seed = request.sampling_params.seed
            if seed is not None and not params[i].greedy:
                self._token_generator.manual_seed((seed * 1_000_003 + request.num_output_tokens) % 2**63)
                noise[i].exponential_(generator=self._token_generator)
        sampled = (probs / noise).argmax(dim=-1)
        return torch.where(greedy, logits.argmax(dim=-1), sampled).tolist()

    @staticmethod
    def _filter(logits: torch.Tensor, params: list) -> torch.Tensor:
        vocab = logits.shape[-1]
        top_k = torch.tensor([p.top_k if p.top_k > 0 else vocab for p in params], device=logits.device)
        top_p = torch.tensor([p.top_p for p in params], device=logits.device, dtype=torch.float32)
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        ranks = torch.arange(vocab, device=logits.device)[None, :]
        drop = ranks >= top_k[:, None]
        probs = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), dim=-1)
        before = probs.cumsum(dim=-1) - probs
        drop |= before >= top_p[:, None]
        drop[:, 0] = False
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        return torch.empty_like(logits).scatter_(-1, order, sorted_logits)
