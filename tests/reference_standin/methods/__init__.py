"""Stand-in agent list (tests only)."""
from dataclasses import dataclass


@dataclass
class Agent:
    name: str
    role: str


def default_agents():
    return [Agent("Alpha", "planner"), Agent("Beta", "critic"), Agent("Gamma", "refiner"), Agent("Omega", "judger")]
