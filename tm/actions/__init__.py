"""TM_MAD actions, one module each (``run(request)``), named as oned names them."""
