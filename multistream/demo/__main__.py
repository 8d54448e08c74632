"""`python -m multistream.demo --output DIR [--seed S]`: write the synthetic demo dataset."""

from multistream.demo.dataset import main

main()
