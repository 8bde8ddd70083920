"""Studies: each paper's protocol as one library object.

- :mod:`steerjax.studies.reliability`: activation steering and its reliability (Tan et al. 2024).
- :mod:`steerjax.studies.prompt_steerability`: prompt steerability (Miehling et al. 2024).
- :mod:`steerjax.studies.steerability_prediction`: predicting steerability early (Fan et al.).
"""
