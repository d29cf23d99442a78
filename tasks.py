"""Inside the repo, ``invoke vm.create …`` runs exactly what ``b2dkit vm.create …`` runs."""

from b2dkit.tasks import ns  # noqa: F401  (invoke picks up ``ns``)
