"""Evaluation of an age-transformation model: does the output look the target age (an age
estimator's estimate), and is it still the same person (identity-embedding cosine similarity)?

``agetool.evaluate(...)`` runs it on photos and returns the report (``agetool.eval.report``).
"""
