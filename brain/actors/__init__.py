"""brain's actor runtime: the BrainActor base, the OTP-style supervisor and the asyncio bridge."""

from brain.actors.base import BrainActor, ChildExited, Link
from brain.actors.supervisor import ChildSpec, Supervisor, total_restarts

__all__ = ["BrainActor", "ChildExited", "ChildSpec", "Link", "Supervisor", "total_restarts"]
