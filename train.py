#!/usr/bin/env python
"""``python train.py ...`` from a checkout. Installed, the same tool is the command ``repq-train``;
its code is :mod:`repq.cli.train`."""

from repq.cli.train import console_main

if __name__ == "__main__":
    console_main()
