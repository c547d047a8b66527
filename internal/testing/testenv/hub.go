package testenv

import rbacv1 "k8s.io/api/rbac/v1"

// HubRules returns the rules of the install's hub ClusterRole (HubRBACFile),
// for a test that runs the hub in its own process as a user holding exactly
// those rules.
func (e *Env) HubRules() ([]rbacv1.PolicyRule, error) {
	_, rules, err := installRole(e.Root, HubRBACFile, "ClusterRole")
	return rules, err
}
