#!/usr/bin/env node
// Entry point for `vdisk`: the CLI is TypeScript run directly by Node.js 24's type stripping.
import '../src/cli/main.ts';
