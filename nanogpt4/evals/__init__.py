"""Evaluations: sandboxed execution of generated code, HumanEval, and (in nanogpt4.scaling) capability prediction."""
