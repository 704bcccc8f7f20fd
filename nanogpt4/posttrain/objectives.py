"""The post-training objectives, as plain tensor functions (each unit-tested against a hand-computed example):
token log-probabilities of a completion, the Bradley–Terry reward-model loss, the DPO loss, generalised advantage
estimation, the per-token KL penalty to the reference policy and PPO's clipped policy and value losses.

Shapes: (B, T) per-token tensors with a 0/1 `mask` of the completion tokens being trained; sums and means run over
masked positions only.
"""
import torch
import torch.nn.functional as F


def token_logprobs(logits, targets):
    """log p(targets[:, t]) under logits[:, t] (B, T, V) — the model run on the inputs, targets shifted by one."""
    return torch.log_softmax(logits.float(), -1).gather(-1, targets[..., None]).squeeze(-1)


def sequence_logprob(token_lp, mask):
    """The log-probability of each sequence's masked tokens: (B,)."""
    return (token_lp * mask).sum(-1)


def bradley_terry_loss(r_chosen, r_rejected):
    """Reward-model loss: −log σ(r_chosen − r_rejected), averaged; and the pair accuracy (r_chosen > r_rejected)."""
    margin = r_chosen - r_rejected
    return -F.logsigmoid(margin).mean(), (margin > 0).float().mean()


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    """DPO (Rafailov et al. 2023): −log σ(β·[(π_c − ref_c) − (π_r − ref_r)]) over sequence log-probabilities,
    averaged; returns (loss, the implicit rewards β·(π − ref) of chosen and rejected)."""
    chosen, rejected = beta * (policy_chosen - ref_chosen), beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(chosen - rejected).mean(), chosen.detach(), rejected.detach()


def kl_penalty(logp, ref_logp):
    """Per-token KL estimate of the sampled tokens, log π(a) − log π_ref(a) (Ziegler et al. 2019; its mean over
    samples from π is KL(π‖π_ref))."""
    return logp - ref_logp


def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    """Generalised advantage estimation (Schulman et al. 2016) over the masked positions of each row, the episode
    ending after its last masked position (value 0 beyond it). Returns (advantages, returns = advantages + values)."""
    B, T = rewards.shape
    adv = torch.zeros_like(rewards)
    running = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    next_value = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = torch.where(m > 0, delta + gamma * lam * running, running)
        adv[:, t] = running * m
        next_value = torch.where(m > 0, values[:, t], next_value)
    return adv, (adv + values) * mask


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x, mask):
    """Advantages normalised to zero mean and unit variance over the masked positions."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def ppo_losses(logp, old_logp, advantages, values, old_values, returns, mask, clip=0.2, value_clip=0.2):
    """PPO's clipped surrogate (Schulman et al. 2017) and clipped value loss, as masked means; returns (policy loss,
    value loss, the fraction of tokens whose ratio was clipped)."""
    ratio = torch.exp(logp - old_logp)
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    clipped_v = old_values + (values - old_values).clamp(-value_clip, value_clip)
    v_loss = 0.5 * torch.maximum((values - returns) ** 2, (clipped_v - returns) ** 2)
    clipped = ((ratio - 1).abs() > clip).float()
    return -masked_mean(surrogate, mask), masked_mean(v_loss, mask), masked_mean(clipped, mask)
