/*
 * The real-guest test's Vulkan program: Mesa's anv driver on the vGPU. A device and a queue, then
 * 100 times: a command buffer that clears a buffer (vkCmdFillBuffer), copies another into it
 * (vkCmdCopyBuffer) and is waited for with a fence. Every line it prints starts with "vktest:";
 * the last is "vktest: PASS" or a line with "FAIL".
 *
 *   vktest [SUBMISSIONS]
 *
 * anv fills and copies buffers with its 3D pipeline (BLORP), which the software GPU does not
 * rasterise: the bytes are reported, not required. What is required is what an application needs
 * from the vGPU: the instance, the device, every submission accepted and every fence signalled.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <vulkan/vulkan.h>

#define FAIL(...)                             \
    do {                                      \
        printf("vktest: FAIL " __VA_ARGS__);  \
        printf("\n");                         \
        return 1;                             \
    } while (0)

#define SIZE (64 * 1024)

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int buffer(VkDevice dev, VkPhysicalDevice pd, VkBufferUsageFlags usage, VkBuffer *buf, VkDeviceMemory *mem,
                  void **map)
{
    VkBufferCreateInfo bi = {.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO, .size = SIZE, .usage = usage};
    if (vkCreateBuffer(dev, &bi, NULL, buf) != VK_SUCCESS)
        return 0;
    VkMemoryRequirements req;
    vkGetBufferMemoryRequirements(dev, *buf, &req);
    VkPhysicalDeviceMemoryProperties props;
    vkGetPhysicalDeviceMemoryProperties(pd, &props);
    const VkMemoryPropertyFlags want = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
    for (uint32_t i = 0; i < props.memoryTypeCount; i++) {
        if ((req.memoryTypeBits & (1u << i)) && (props.memoryTypes[i].propertyFlags & want) == want) {
            VkMemoryAllocateInfo ai = {
                .sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO, .allocationSize = req.size, .memoryTypeIndex = i};
            if (vkAllocateMemory(dev, &ai, NULL, mem) != VK_SUCCESS)
                return 0;
            if (vkBindBufferMemory(dev, *buf, *mem, 0) != VK_SUCCESS)
                return 0;
            return vkMapMemory(dev, *mem, 0, SIZE, 0, map) == VK_SUCCESS;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 100;
    if (rounds < 1 || rounds > 100000)
        FAIL("submission count %d", rounds);
    double t0 = now_ms();
    VkApplicationInfo app = {.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO, .apiVersion = VK_API_VERSION_1_0};
    VkInstanceCreateInfo ii = {.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO, .pApplicationInfo = &app};
    VkInstance inst;
    VkResult r = vkCreateInstance(&ii, NULL, &inst);
    if (r != VK_SUCCESS)
        FAIL("vkCreateInstance: %d", r);
    uint32_t n = 0;
    vkEnumeratePhysicalDevices(inst, &n, NULL);
    if (n == 0)
        FAIL("no physical device");
    VkPhysicalDevice pds[8];
    n = n > 8 ? 8 : n;
    vkEnumeratePhysicalDevices(inst, &n, pds);
    VkPhysicalDevice pd = VK_NULL_HANDLE;
    VkPhysicalDeviceProperties p;
    for (uint32_t i = 0; i < n && !pd; i++) {
        vkGetPhysicalDeviceProperties(pds[i], &p);
        if (strstr(p.deviceName, "Intel"))
            pd = pds[i];
    }
    if (!pd)
        FAIL("no Intel device (Mesa's anv)");
    printf("vktest: %s, Vulkan %u.%u, driver %#x\n", p.deviceName, VK_VERSION_MAJOR(p.apiVersion),
           VK_VERSION_MINOR(p.apiVersion), p.driverVersion);
    uint32_t nq = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(pd, &nq, NULL);
    VkQueueFamilyProperties qf[8];
    nq = nq > 8 ? 8 : nq;
    vkGetPhysicalDeviceQueueFamilyProperties(pd, &nq, qf);
    uint32_t family = UINT32_MAX;
    for (uint32_t i = 0; i < nq; i++)
        if (qf[i].queueFlags & VK_QUEUE_GRAPHICS_BIT) {
            family = i;
            break;
        }
    if (family == UINT32_MAX)
        FAIL("no graphics queue");
    float prio = 1.0f;
    VkDeviceQueueCreateInfo qi = {
        .sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO, .queueFamilyIndex = family, .queueCount = 1,
        .pQueuePriorities = &prio};
    VkDeviceCreateInfo di = {.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO, .queueCreateInfoCount = 1,
                             .pQueueCreateInfos = &qi};
    VkDevice dev;
    r = vkCreateDevice(pd, &di, NULL, &dev);
    if (r != VK_SUCCESS)
        FAIL("vkCreateDevice: %d", r);
    VkQueue queue;
    vkGetDeviceQueue(dev, family, 0, &queue);

    VkBuffer src, dst;
    VkDeviceMemory src_mem, dst_mem;
    void *src_map, *dst_map;
    if (!buffer(dev, pd, VK_BUFFER_USAGE_TRANSFER_SRC_BIT, &src, &src_mem, &src_map) ||
        !buffer(dev, pd, VK_BUFFER_USAGE_TRANSFER_DST_BIT, &dst, &dst_mem, &dst_map))
        FAIL("host-visible buffers");
    VkCommandPoolCreateInfo pi = {.sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
                                  .flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT,
                                  .queueFamilyIndex = family};
    VkCommandPool pool;
    if (vkCreateCommandPool(dev, &pi, NULL, &pool) != VK_SUCCESS)
        FAIL("vkCreateCommandPool");
    VkCommandBufferAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO, .commandPool = pool,
                                      .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY, .commandBufferCount = 1};
    VkCommandBuffer cb;
    if (vkAllocateCommandBuffers(dev, &ai, &cb) != VK_SUCCESS)
        FAIL("vkAllocateCommandBuffers");
    VkFenceCreateInfo fi = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    VkFence fence;
    if (vkCreateFence(dev, &fi, NULL, &fence) != VK_SUCCESS)
        FAIL("vkCreateFence");
    printf("vktest: device ready in %.0f ms\n", now_ms() - t0);

    int copied = 0;
    double worst = 0;
    for (int i = 0; i < rounds; i++) {
        memset(src_map, i & 0xff, SIZE);
        VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
                                       .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT};
        if (vkBeginCommandBuffer(cb, &bi) != VK_SUCCESS)
            FAIL("vkBeginCommandBuffer");
        vkCmdFillBuffer(cb, dst, 0, SIZE, 0);
        VkMemoryBarrier mb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                              .srcAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT,
                              .dstAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT};
        vkCmdPipelineBarrier(cb, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_PIPELINE_STAGE_TRANSFER_BIT, 0, 1, &mb, 0, NULL, 0,
                             NULL);
        VkBufferCopy region = {.size = SIZE};
        vkCmdCopyBuffer(cb, src, dst, 1, &region);
        if (vkEndCommandBuffer(cb) != VK_SUCCESS)
            FAIL("vkEndCommandBuffer");
        VkSubmitInfo si = {.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO, .commandBufferCount = 1, .pCommandBuffers = &cb};
        double start = now_ms();
        r = vkQueueSubmit(queue, 1, &si, fence);
        if (r != VK_SUCCESS)
            FAIL("vkQueueSubmit %d: %d", i, r);
        r = vkWaitForFences(dev, 1, &fence, VK_TRUE, 10ull * 1000 * 1000 * 1000);
        if (r != VK_SUCCESS)
            FAIL("fence %d not signalled: %d", i, r);
        double took = now_ms() - start;
        worst = took > worst ? took : worst;
        vkResetFences(dev, 1, &fence);
        vkResetCommandBuffer(cb, 0);
        copied += memcmp(src_map, dst_map, SIZE) == 0;
    }
    printf("vktest: %d submissions, fences all signalled, worst %.1f ms; copy bytes matched in %d of %d "
           "(the driver copies with the 3D pipeline, which the software GPU does not run)\n",
           rounds, worst, copied, rounds);
    vkDeviceWaitIdle(dev);
    vkDestroyFence(dev, fence, NULL);
    vkDestroyCommandPool(dev, pool, NULL);
    vkDestroyBuffer(dev, src, NULL);
    vkDestroyBuffer(dev, dst, NULL);
    vkFreeMemory(dev, src_mem, NULL);
    vkFreeMemory(dev, dst_mem, NULL);
    vkDestroyDevice(dev, NULL);
    vkDestroyInstance(inst, NULL);
    printf("vktest: PASS\n");
    return 0;
}
