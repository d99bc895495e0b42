"""The model lifecycle: registering role models, their champions, the promotion rule, promotion and rollback, and the
MLflow tracking of a pipeline run. Import from the modules; this package imports nothing itself.

    store     the registered models `umi-<role>`: a version per checkpoint, single aliases, downloads
    tags      every MLflow tag key umi writes (on versions, promotion records, pipeline runs), defined once
    aliases   `champion` / `previous-champion` moved for several roles all-or-nothing (a pending record, reconciled)
    rule      the promotion rule (`decide`): when a candidate replaces the champion; pure, no MLflow
    promote   promote / rollback / judge: the rule applied and the aliases moved, keeping history
    tracking  the pipeline's MLflow parent run, links into the MLflow UI, the Prefect flow run it belongs to
"""
