#!/usr/bin/env python
"""``python ptq.py ...`` from a checkout. Installed, the same tool is the command ``repq-ptq``;
its code is :mod:`repq.cli.ptq`."""

from repq.cli.ptq import console_main

if __name__ == "__main__":
    console_main()
