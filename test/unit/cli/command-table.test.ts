// The command table loads each command's module only when it runs; this keeps the table's keys and the
// modules' own names from drifting apart, and checks that dispatch loads nothing but the one command.
import { describe, expect, it } from 'vitest';
import { commandNames, loadAllCommands, loadCommand } from '../../../src/cli/commands/index.ts';

describe('CLI command table', () => {
  it('names every command by the name its module gives it, in alphabetical order', async () => {
    const loaded = await loadAllCommands();
    expect(loaded.map((command) => command.name)).toEqual(commandNames);
    expect([...commandNames].sort()).toEqual(commandNames);
    for (const command of loaded) {
      expect(command.synopsis.startsWith(`${command.name} `), command.name).toBe(true);
      expect(command.summary.length).toBeGreaterThan(10);
    }
  });

  it('has no command for names outside the table (Object prototype keys included)', () => {
    expect(loadCommand('nonexistent')).toBeUndefined();
    expect(loadCommand('toString')).toBeUndefined();
    expect(loadCommand('__proto__')).toBeUndefined();
  });
});
