"""Results and their reading: metrics (UA, WA, macro-F1), the comparison report
(the paper's tables), the domain-shift meter, the fidelity table of every
setting, and the paper's names for methods and folds.
"""
