"""Trainers people already use, as loops of :data:`raytune_opt.registry.LOOPS`.

Each integration is written against :class:`~raytune_opt.recipe.context.TrialContext`, so
checkpoints, schedulers, resume, PBT, results, the report and promotion work for it as for
any loop. Its validation rules live in a torch-free ``*_rules`` module beside it.
"""
