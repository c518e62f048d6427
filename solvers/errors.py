"""Exceptions of the convex side."""


class SolverError(RuntimeError):
    """A convex solver returned a status other than optimal (the solver and status are named)."""

    def __init__(self, solver: str, status: str, detail: str = ""):
        self.solver = solver
        self.status = status
        msg = f"solver {solver} returned status {status!r}"
        super().__init__(msg + (f": {detail}" if detail else ""))
