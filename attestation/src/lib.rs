//! Attestation: TDX / SEV-SNP / simulated evidence, verification, policy and HPKE sealing.
//! Filled by the attestation issue (#3); nothing here yet.
