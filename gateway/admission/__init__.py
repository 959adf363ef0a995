"""Admission control: caps per routing group (store leases), the fair gateway queue
(``fair_queue``) and the polls of held queries (``held``). See docs/admission.md."""
