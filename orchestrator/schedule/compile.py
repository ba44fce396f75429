"""Policies become job specs: what the scheduler runs, when, and with which arguments."""

from dataclasses import dataclass

from policies.model import Bundle, Policy

from .triggers import PolicyTrigger, trigger_for


@dataclass(frozen=True)
class JobSpec:
    id: str
    policy: Policy
    trigger: PolicyTrigger
    action: str  # the policy kind: source-snapshot | auto-marker | group

    @property
    def name(self) -> str:
        return self.policy.name


def compile_jobs(bundle: Bundle) -> list[JobSpec]:
    """One job per enabled policy; the job id is the policy name (stable across restarts)."""
    return [JobSpec(p.name, p, trigger_for(p), p.kind) for p in bundle.policies if p.enabled]
