"""DS_MAD actions, one module each, named as oned names the action (``run(request)``)."""
