"""`python -m bcmb_jax.data stats|prepare ...`: see `bcmb_jax.data.commands`."""

from bcmb_jax import cli
from bcmb_jax.data.commands import main

if __name__ == "__main__":
    cli.run(main)
