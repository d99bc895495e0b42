"""The `umi` command, one module per command group; library code never imports this package. Import from the modules;
this package imports nothing itself.

    main      the `umi` app (the entry point): every group below joined
    common    the default folders and MLflow tracking store the groups share
    data      umi data import bfcl | toolbench | alpha-umi, umi data reorganize | stats
    backbone  umi backbone import
    train     umi train <stage> | all | status
    run       umi run: the glpft_pipeline flow in a child process
    eval      umi eval static | live | all
    models    umi models list | show | promote | rollback
    deploy    umi deploy build | serve
    chat      umi chat
"""
