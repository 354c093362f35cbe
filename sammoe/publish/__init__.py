"""Publishing an expert: ``package`` turns a finetuned checkpoint into a pip-installable plugin project,
``verify`` checks an installed expert against its backbone. Both stand on `sammoe.loading`; the torch-free
plugin contract (manifest, discovery, checksums) is `sammoe.plugins`."""
