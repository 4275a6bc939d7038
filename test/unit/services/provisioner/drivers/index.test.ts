import { defaultInstance, INSTANCE_PATTERN } from '../../../../../services/provisioner/drivers/index.ts';

describe('the deployment instance', () => {
  it('defaults to agent-manager, prefixed with the topic prefix, always a valid label value', () => {
    expect(defaultInstance('')).toBe('agent-manager');
    expect(defaultInstance('staging.')).toBe('staging.agent-manager');
    expect(defaultInstance('t-1f2e_')).toBe('t-1f2e_agent-manager');
    for (const prefix of ['.', '-x.', 'a'.repeat(100), '__']) expect(defaultInstance(prefix)).toMatch(INSTANCE_PATTERN);
  });
});
