// Package docs holds kvinject's documentation pages (Markdown). It has no code;
// its test, docs_test.go, keeps the pages and the README true to the code: the
// annotation keys, the install's RBAC, the links, the make targets, the webhook's
// flags, the package tree and the dependencies.
package docs
