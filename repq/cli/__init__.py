"""The command-line tools: ``repq-train`` (:mod:`repq.cli.train`), ``repq-export``
(:mod:`repq.cli.export`) and ``repq-ptq`` (:mod:`repq.cli.ptq`); ``repq-convert`` is
:mod:`repq.convert`. From a checkout, ``python train.py`` etc. run the same code."""
