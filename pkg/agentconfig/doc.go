// Package agentconfig is the contract between kvinject's webhook and its agent,
// with no Kubernetes in it: what the webhook writes into the agent container and
// the agent (and its doctor) read back.
//
//   - the mapping's entry grammar (Entry, ParseEntry, ParseEntries);
//   - the agent's command line (Config: Args writes it, ParseArgs reads it, with
//     the flag names of the Flag constants);
//   - the agent's environment (the Env constants);
//   - the identity kinds and the identity grammar (IdentityKind, ParseIdentity);
//   - the Azure clouds and vault URLs (Cloud, VaultURL, CloudOfVault,
//     CloudOfAuthority).
//
// Package mapping (annotations to what to fetch) and package mutate (the pod
// mutation) build on it in the webhook; the agent binary imports it without
// linking any Kubernetes package. The package is pure: no I/O, no clocks.
package agentconfig
