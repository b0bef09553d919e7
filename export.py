#!/usr/bin/env python
"""``python export.py ...`` from a checkout. Installed, the same tool is the command ``repq-export``;
its code is :mod:`repq.cli.export`."""

from repq.cli.export import console_main

if __name__ == "__main__":
    console_main()
