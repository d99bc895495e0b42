"""Test support, never a production default: scripted backends (scripted), tiny models built in code (tiny), an
episode's role prompts (episodes), and where the shared fixtures beside the checkout are (fixtures). The tests and the
benchmarks import it as tests.support."""
