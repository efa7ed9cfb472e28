"""CKKS (TenSEAL) for fedcare's HE mode, one module per role (docs/he.md has the threat model).

Who holds what:

- Every hospital holds the same *secret* context. It encrypts (symmetric CKKS: half the time of
  public-key encryption, less noise, and no public key that could be misused) and decrypts.
- The server holds a context with the parameters only: no secret, public, relinearisation or
  Galois key. Adding ciphertexts needs nothing more, so the server gets nothing more (89 bytes).

A hospital flattens its update in key order, multiplies it by its sample count, appends two
check values ("canaries") and encrypts it in chunks of one ciphertext each. The server adds the
chunks of all hospitals; a hospital decrypts the sum, checks the canaries and divides by the total
count. `wire` says what the canaries are and what they catch.

CKKS has no integrity: anyone can make a ciphertext that decrypts to a value of their choice, and
the header digest is unkeyed. The digest catches bytes damaged in transit or storage and a header
edited by accident; authenticity of a hospital's message comes from Flower's TLS and SuperNode
authentication, not from here.

The modules, by who runs them (import from the module, so an importer's imports show its role;
this package re-exports nothing, and nothing the server runs imports `hospital`):

- `params`: CKKS parameters, their security checks, and a context built from them. Everyone.
- `keys`: making the key set and its files (`fedcare he keygen`), loading a hospital's secret
  context, and loading the server's key-free context with the check that it holds no secret key.
- `wire`: the header, the bundle, its digest and the check slots: the format both sides parse.
  All the server touches besides `params` and `keys`.
- `hospital`: encrypting an update and decrypting the sum. Only a hospital runs it.
"""
