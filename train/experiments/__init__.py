"""Dev-set measurement scripts: each has a ``main()`` and informs a choice made in train/."""
