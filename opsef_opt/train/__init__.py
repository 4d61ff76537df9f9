"""Training helpers: fit small models on the user's own images and labels (see :mod:`opsef_opt.train.cellpose_train`)."""
