"""The experimental protocol around the stages: command line and per-run
hyperparameters, the recipe flow (folds x runs, outlier rule, summaries),
checkpoints, the stage cache, option checks, multi-process helpers and the
package's user errors.
"""
