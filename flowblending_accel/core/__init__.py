"""The core: what ``import flowblending_accel`` gives, and everything the router needs, with no tool in it.

Read it top down: ``api`` (the verbs and ``FlowBlendingConfig``) applies a ``router`` (``ModelRouter``) to a
pipeline's denoiser; a run is a ``session`` over a ``plan`` (the ``schedule`` laid on the solver's step grid,
``step_grid``); ``listeners`` (and the ``guidance_free`` interceptor) follow it; ``stats`` record it;
``follow`` keeps the small model on the large one's device, dtype and offloading; ``compat`` checks a pair;
``families`` is the registry of pipeline families; ``diffusers_internals`` is the one module that touches
diffusers' hook internals, ``diffusers_versions`` the one that knows what each diffusers minor has;
``patches`` holds every change made to another library's objects or globals, each with its undo (none is
made on import); ``denoiser`` is the k-diffusion callable; ``named_schedulers`` names diffusers schedulers;
``distributed`` splits prompts across processes.
"""
